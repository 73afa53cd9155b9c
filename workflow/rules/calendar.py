"""Business-time arithmetic: when is an SLA target due, and how much of it has been used.

A ``BusinessCalendar`` is a time zone, weekly opening hours written as local wall-clock
times, public holidays (the ``holidays`` package) and extra closed dates; or it is always
open. Everything here is pure: no I/O, no wall clock. Instants go in timezone-aware and
come out in UTC.

How the pieces fit:

* Each local date is turned once into its open intervals as real UTC instants
  (``_day_intervals``, cached). Opening hours are wall-clock times, so on a day whose DST
  change falls inside the hours the interval is really an hour shorter or longer.
* Every operation walks those intervals day by day, whole intervals at a time, so one call
  costs O(days spanned), never O(minutes).
* Searches forward (``add``, ``next_open``) give up with ``CalendarError`` after about ten
  years, so a rarely open calendar or an absurd duration cannot loop for ever.

Wall-clock times that a DST change makes odd are read so that the office is open exactly
while its clock shows a time inside the range:

* a time skipped by a spring-forward change (01:30 in London on the last Sunday of March)
  means the instant the clock jumps over it;
* a time shown twice by a fall-back change opens at its first showing and closes at its
  second, so the whole wall-clock range is covered;
* ``24:00`` is the first instant of the next day, so a day never reaches into the next one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from postdesk.workflow.rules.durations import Duration
from postdesk.workflow.rules.errors import UserError

__all__ = ["BusinessCalendar", "CalendarError"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_ZERO = timedelta(0)
_ONE_DAY = timedelta(days=1)
_DAY_MINUTES = 24 * 60
# Searches stop after about ten years: far beyond any SLA target, and short enough that a
# calendar which is (almost) never open fails in milliseconds instead of hanging a worker.
_MAX_SEARCH_DAYS = 3660
# Ten-odd years of days; past that the cache is dropped and rebuilt rather than grown for ever
# in a long-running worker that has seen many scattered dates.
_DAY_CACHE_LIMIT = 4096
_RANGE = re.compile(r"^(\d{2}):(\d{2})\s*-\s*(\d{2}):(\d{2})$")

Interval = tuple[datetime, datetime]


class CalendarError(UserError, ValueError):
    """A calendar spec that cannot work, or a search that ran past ~10 years.

    The message starts with the offending key, e.g. ``hours.mon: '8-18' is not HH:MM-HH:MM``.
    """


def _as_utc(value: datetime, name: str) -> datetime:
    # Naive datetimes are refused rather than guessed: a wrong guess shifts every SLA
    # deadline by the server's UTC offset, silently.
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def parse_day_hours(key: str, spec: object, where: str | None = None
                    ) -> tuple[tuple[int, int], ...]:
    """``"08:00-12:00,13:00-17:30"`` → ((480, 720), (780, 1050)) in minutes since midnight.
    The one parser of opening hours: ``config check`` and the calendar both use it."""
    where = where or f"hours.{key}"
    if not isinstance(spec, str):
        raise CalendarError(
            f"{where}: expected a string like '08:00-18:00', got {type(spec).__name__}"
        )
    if spec.strip().lower() == "closed":
        return ()
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise CalendarError(f"{where}: {part.strip()!r} is not HH:MM-HH:MM")
        sh, sm, eh, em = (int(g) for g in match.groups())
        if sh > 23 or sm > 59:
            raise CalendarError(f"{where}: {sh:02d}:{sm:02d} is not a valid opening time")
        # 24:00 is allowed as an end only, so a range can run to the end of the day.
        if not (eh < 24 and em <= 59) and (eh, em) != (24, 0):
            raise CalendarError(f"{where}: {eh:02d}:{em:02d} is not a valid closing time")
        start, end = sh * 60 + sm, eh * 60 + em
        if end <= start:
            raise CalendarError(f"{where}: {part.strip()!r} closes before it opens")
        ranges.append((start, end))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start < merged[-1][1]:
            prev = merged[-1]
            raise CalendarError(
                f"{where}: ranges {_hhmm(prev[0])}-{_hhmm(prev[1])} and "
                f"{_hhmm(start)}-{_hhmm(end)} overlap"
            )
        if merged and start == merged[-1][1]:
            # Touching ranges are one stretch of opening; keeping them apart would make
            # "exactly the end of an interval" ambiguous at the seam.
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_closed(closed: Iterable[date | str]) -> frozenset[date]:
    days: set[date] = set()
    for i, item in enumerate(closed):
        # datetime is a subclass of date; a datetime here is almost surely a mistake
        # (which part of it is the closed day in which zone?), so it is refused.
        if isinstance(item, date) and not isinstance(item, datetime):
            days.add(item)
        elif isinstance(item, str):
            # Config files (TOML strings) give "2026-12-24"; accept it to spare every caller
            # the conversion.
            try:
                days.add(date.fromisoformat(item.strip()))
            except ValueError:
                raise CalendarError(f"closed[{i}]: {item!r} is not a YYYY-MM-DD date") from None
        else:
            raise CalendarError(f"closed[{i}]: expected a date, got {type(item).__name__}")
    return frozenset(days)


class BusinessCalendar:
    """Opening hours in a time zone, minus holidays and closed dates; or always open."""

    def __init__(
        self,
        *,
        timezone: str = "UTC",
        hours: Mapping[str, str] | None = None,
        holidays_country: str | None = None,
        holidays_subdiv: str | None = None,
        closed: Iterable[date] = (),
        always_open: bool = False,
    ) -> None:
        try:
            self._zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise CalendarError(f"timezone: unknown time zone {timezone!r}") from None
        self._timezone = timezone
        self._always = bool(always_open)
        closed_days = _parse_closed(closed)

        if self._always:
            # Silently ignoring hours on a 24/7 calendar would hide a config mistake.
            extras = [
                name
                for name, value in (
                    ("hours", hours),
                    ("holidays_country", holidays_country),
                    ("holidays_subdiv", holidays_subdiv),
                    ("closed", closed_days),
                )
                if value
            ]
            if extras:
                raise CalendarError(f"always_open: cannot be combined with {', '.join(extras)}")
        elif hours is None:
            raise CalendarError("hours: required unless always_open is true")

        weekly: list[tuple[tuple[int, int], ...]] = [()] * 7
        if hours is not None:
            if not isinstance(hours, Mapping):
                raise CalendarError(
                    f"hours: expected a mapping of weekday to ranges, got {type(hours).__name__}"
                )
            for key, spec in hours.items():
                if key not in WEEKDAYS:
                    raise CalendarError(f"hours.{key}: unknown weekday (use {', '.join(WEEKDAYS)})")
                weekly[WEEKDAYS.index(key)] = parse_day_hours(key, spec)
            if not self._always and not any(weekly):
                # Every search would run to the ten-year guard; better to fail at startup.
                raise CalendarError("hours: the calendar is never open (no opening hours)")
        self._weekly = tuple(weekly)

        if holidays_subdiv is not None and holidays_country is None:
            raise CalendarError("holidays_subdiv: given without holidays_country")
        if holidays_country is not None:
            # Validate now (years=[] computes nothing) so a typo fails at startup, not at the
            # first due date of the year.
            try:
                holidays.country_holidays(holidays_country, years=[])
            except (NotImplementedError, KeyError, ValueError) as exc:
                raise CalendarError(f"holidays_country: {exc}") from None
            try:
                holidays.country_holidays(holidays_country, subdiv=holidays_subdiv, years=[])
            except (NotImplementedError, KeyError, ValueError) as exc:
                raise CalendarError(f"holidays_subdiv: {exc}") from None
        self._country = holidays_country
        self._subdiv = holidays_subdiv
        self._closed = closed_days

        # year -> closed dates of that year (holidays + extra), filled lazily.
        self._closed_by_year: dict[int, frozenset[date]] = {}
        # local date -> its open intervals in UTC, filled lazily.
        self._days: dict[date, tuple[Interval, ...]] = {}

    @classmethod
    def always(cls) -> BusinessCalendar:
        """A 24/7 calendar: business time is real elapsed time."""
        return cls(always_open=True)

    @property
    def timezone(self) -> str:
        return self._timezone

    @property
    def always_open(self) -> bool:
        return self._always

    def __repr__(self) -> str:
        if self._always:
            return f"BusinessCalendar.always(timezone={self._timezone!r})"
        hours = {
            WEEKDAYS[i]: ",".join(f"{_hhmm(s)}-{_hhmm(e)}" for s, e in ranges)
            for i, ranges in enumerate(self._weekly)
            if ranges
        }
        return (
            f"BusinessCalendar(timezone={self._timezone!r}, hours={hours!r}, "
            f"holidays_country={self._country!r}, holidays_subdiv={self._subdiv!r}, "
            f"closed={sorted(self._closed)!r})"
        )

    # ----------------------------------------------------------------- public operations

    def is_open(self, at: datetime) -> bool:
        at = _as_utc(at, "at")
        if self._always:
            return True
        # A local day's intervals never leave that local day (see module docstring), so
        # only the day `at` falls on can contain it.
        return any(a <= at < b for a, b in self._day_intervals(self._local_date(at)))

    def open_intervals(self, start: datetime, end: datetime) -> Iterator[Interval]:
        """Open stretches inside [start, end), in order, as UTC pairs clipped to the range.

        Stretches that touch (e.g. across midnight on a calendar open round the clock) are
        yielded as one.
        """
        start = _as_utc(start, "start")
        end = _as_utc(end, "end")
        return self._open_intervals(start, end)

    def add(self, start: datetime, duration: Duration) -> datetime:
        """The instant at which `duration` of business time has elapsed from `start`.

        Clock time (h/m/s) counts only while open, starting at the next opening if `start`
        is outside hours; landing exactly on a closing time returns that closing time.
        Days (``d``) move to the same position in the business day N open days later; see
        ``_add_days``. Days are applied first, then the clock part. Adding zero returns
        `start` (in UTC) even when the calendar is closed then.
        """
        start = _as_utc(start, "start")
        if not isinstance(duration, Duration):
            raise TypeError(f"duration must be a Duration, got {type(duration).__name__}")
        if duration.days < 0 or duration.seconds < 0:
            raise ValueError(f"duration must not be negative: {duration!r}")
        if self._always:
            return start + duration.as_timedelta()
        result = start
        if duration.days:
            result = self._add_days(result, duration.days)
        if duration.seconds:
            result = self._add_clock(result, timedelta(seconds=duration.seconds))
        return result

    def elapsed(
        self,
        start: datetime,
        end: datetime,
        paused: Sequence[tuple[datetime, datetime]] = (),
    ) -> timedelta:
        """Business time in [start, end) not covered by any paused span.

        Paused spans may overlap each other and reach outside [start, end); they are clipped
        and merged so no time is subtracted twice. ``end <= start`` gives zero.
        """
        start = _as_utc(start, "start")
        end = _as_utc(end, "end")
        spans = []
        for i, (p_start, p_end) in enumerate(paused):
            p_start = _as_utc(p_start, f"paused[{i}] start")
            p_end = _as_utc(p_end, f"paused[{i}] end")
            if p_end < p_start:
                raise ValueError(f"paused[{i}] ends before it starts: {p_start} > {p_end}")
            spans.append((p_start, p_end))
        if end <= start:
            return _ZERO
        measure = self._measure
        total = measure(start, end)
        for p_start, p_end in _merge_clipped(spans, start, end):
            total -= measure(p_start, p_end)
        return total

    def next_open(self, at: datetime) -> datetime:
        """`at` itself if the calendar is open then, else the next opening (UTC)."""
        at = _as_utc(at, "at")
        if self._always:
            return at
        # _walk never runs dry: it yields or raises CalendarError at the ten-year guard.
        return next(self._walk(at))[0]

    # ----------------------------------------------------------------- walking intervals

    def _local_date(self, at: datetime) -> date:
        return at.astimezone(self._zone).date()

    def _walk(self, at: datetime) -> Iterator[Interval]:
        """Open intervals from `at` onwards, clipped to start no earlier than `at`.

        Endless except for the ten-year guard, which raises CalendarError.
        """
        day_intervals = self._day_intervals
        day = self._local_date(at)
        cursor = at
        for _ in range(_MAX_SEARCH_DAYS):
            for a, b in day_intervals(day):
                if b <= cursor:
                    continue
                # The cursor keeps the output ordered and non-overlapping even if two days'
                # intervals were ever to touch.
                if a < cursor:
                    a = cursor
                yield a, b
                cursor = b
            day += _ONE_DAY
        raise CalendarError(
            f"searched past {_MAX_SEARCH_DAYS} days (~10 years) from {at.isoformat()} without "
            "finding enough open time; the calendar is open too rarely or the duration is "
            "too long"
        )

    def _open_intervals(self, start: datetime, end: datetime) -> Iterator[Interval]:
        if end <= start:
            return
        if self._always:
            yield start, end
            return
        # Bounded by `end`, so no ten-year guard: a long range is long, not a runaway search.
        day_intervals = self._day_intervals
        day = self._local_date(start)
        last_day = self._local_date(end)
        pending: Interval | None = None
        cursor = start
        while day <= last_day:
            for a, b in day_intervals(day):
                if b <= cursor:
                    continue
                if a >= end:
                    break
                a = max(a, cursor)
                b = min(b, end)
                if pending is not None and pending[1] == a:
                    pending = (pending[0], b)
                else:
                    if pending is not None:
                        yield pending
                    pending = (a, b)
                cursor = b
            day += _ONE_DAY
        if pending is not None:
            yield pending

    def _measure(self, start: datetime, end: datetime) -> timedelta:
        total = _ZERO
        for a, b in self._open_intervals(start, end):
            total += b - a
        return total

    def _add_clock(self, start: datetime, remaining: timedelta) -> datetime:
        for a, b in self._walk(start):
            span = b - a
            # `<=` rather than `<`: using up exactly the rest of an interval ends at its
            # closing time, not at the next opening.
            if remaining <= span:
                return a + remaining
            remaining -= span
        raise AssertionError("unreachable: _walk is endless or raises")  # pragma: no cover

    def _add_days(self, start: datetime, days: int) -> datetime:
        """Same position in the business day `days` open days later.

        The position is the business time already elapsed in start's business day: 0 before
        opening; the elapsed open time if inside hours or in a gap between ranges (so the
        lunch hour counts as the end of the morning); and after the last closing, or on a
        closed day, 0 of the next open day — an email that arrives after hours is treated
        as arriving at the next opening, as clock targets do. On the target day the position
        is clamped to that day's open time (a shorter day ends at its closing), and a
        position that lands exactly on the end of a range is that range's closing time.
        """
        base, position = self._locate(start)
        day_intervals = self._day_intervals
        day = base
        found = 0
        for _ in range(_MAX_SEARCH_DAYS):
            day += _ONE_DAY
            if day_intervals(day):
                found += 1
                if found == days:
                    break
        else:
            raise CalendarError(
                f"searched past {_MAX_SEARCH_DAYS} days (~10 years) from {start.isoformat()} "
                f"for {days} open days; the calendar is open too rarely or the duration is "
                "too long"
            )
        intervals = day_intervals(day)
        for a, b in intervals:
            span = b - a
            if position <= span:
                return a + position
            position -= span
        return intervals[-1][1]

    def _locate(self, at: datetime) -> tuple[date, timedelta]:
        """(business day, position in it) of `at`, as described in ``_add_days``."""
        day_intervals = self._day_intervals
        day = self._local_date(at)
        for _ in range(_MAX_SEARCH_DAYS):
            intervals = day_intervals(day)
            if intervals and intervals[-1][1] > at:
                position = _ZERO
                for a, b in intervals:
                    if a >= at:
                        break
                    position += min(b, at) - a
                return day, position
            day += _ONE_DAY
        raise CalendarError(
            f"searched past {_MAX_SEARCH_DAYS} days (~10 years) from {at.isoformat()} without "
            "finding an open day"
        )

    # ----------------------------------------------------------------- building days

    def _day_intervals(self, day: date) -> tuple[Interval, ...]:
        """Open intervals of one local date, as UTC instants; cached."""
        cached = self._days.get(day)
        if cached is None:
            if len(self._days) >= _DAY_CACHE_LIMIT:
                self._days.clear()
            cached = self._days[day] = self._build_day(day)
        return cached

    def _build_day(self, day: date) -> tuple[Interval, ...]:
        ranges = self._weekly[day.weekday()]
        if not ranges or day in self._closed_in_year(day.year):
            return ()
        built: list[Interval] = []
        for start_min, end_min in ranges:
            a = self._wall_to_utc(day, start_min, closing=False)
            b = self._wall_to_utc(day, end_min, closing=True)
            if b > a:  # a range wholly inside a skipped hour has no real instants
                built.append((a, b))
        # The DST readings above can make neighbouring ranges overlap in real time (a closing
        # read at its second showing after the next opening's first); merge them so no
        # instant is counted twice.
        built.sort()
        merged: list[Interval] = []
        for a, b in built:
            if merged and a <= merged[-1][1]:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return tuple(merged)

    def _closed_in_year(self, year: int) -> frozenset[date]:
        cached = self._closed_by_year.get(year)
        if cached is None:
            days = {d for d in self._closed if d.year == year}
            if self._country is not None:
                found = holidays.country_holidays(self._country, subdiv=self._subdiv, years=year)
                days.update(d for d in found if d.year == year)
            cached = self._closed_by_year[year] = frozenset(days)
        return cached

    def _wall_to_utc(self, day: date, minutes: int, *, closing: bool) -> datetime:
        """The real instant of a wall-clock time on a local date (rules in module docstring)."""
        if minutes == _DAY_MINUTES:
            # 24:00 is the next day's first instant: read as an opening so that an ambiguous
            # or skipped midnight (America/Havana) never lets a day reach into the next.
            day += _ONE_DAY
            minutes = 0
            closing = False
        naive = datetime.combine(day, time(minutes // 60, minutes % 60))
        first = naive.replace(tzinfo=self._zone, fold=0)
        second = naive.replace(tzinfo=self._zone, fold=1)
        before, after = first.utcoffset(), second.utcoffset()
        if before == after:
            return first.astimezone(UTC)
        assert before is not None and after is not None
        if before > after:
            # Fall back: the time is shown twice; fold=0 is the first showing.
            return (second if closing else first).astimezone(UTC)
        # Spring forward: the time is never shown. fold=1 reads it with the new offset (an
        # instant before the jump), fold=0 with the old one (after the jump); the jump lies
        # between them.
        return self._transition_between(second.astimezone(UTC), first.astimezone(UTC))

    def _transition_between(self, lo: datetime, hi: datetime) -> datetime:
        """The first instant in (lo, hi] with hi's UTC offset; lo has another offset.

        zoneinfo does not expose transition instants, so bisect on whole seconds (tz
        offsets and transitions are whole seconds): about a dozen steps, once per DST day.
        """
        zone = self._zone
        target = hi.astimezone(zone).utcoffset()
        lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp())
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            if datetime.fromtimestamp(mid, zone).utcoffset() == target:
                hi_s = mid
            else:
                lo_s = mid
        return datetime.fromtimestamp(hi_s, UTC)


def _merge_clipped(spans: Iterable[Interval], start: datetime, end: datetime) -> Iterator[Interval]:
    """Spans clipped to [start, end), empty ones dropped, overlapping ones merged."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in spans)
    current: Interval | None = None
    for a, b in clipped:
        if b <= a:
            continue
        if current is not None and a <= current[1]:
            if b > current[1]:
                current = (current[0], b)
            continue
        if current is not None:
            yield current
        current = (a, b)
    if current is not None:
        yield current
