"""When a manager's digest is due: the digest periods on the digest calendar, pure.

* The digest calendar (``[digest] calendar``, default Monday-Friday in the digest zone)
  says which local dates are *open days*; only its days matter, not its hours.
* A period's *slot* is the instant its digest goes out, ``[digest] at`` local time:
  daily, on each open day; weekly, on the first open day of each ISO week.
* Due now: the latest slot at or before now, if no digest was sent for it. One digest,
  however many slots were missed while postdesk was down; it covers the whole gap (from
  the last slot a digest was sent for).
* First start (no digest ever sent): only when that latest slot is today, so a desk
  started on a Sunday or a Tuesday does not send last Monday's weekly digest.

A period is named by the local date of its slot (``2027-05-03``); digests are keyed by
that name, so it is what "already sent" is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from postdesk.workflow.rules.calendar import BusinessCalendar
from postdesk.workflow.rules.config import Config, DigestConfig
from postdesk.workflow.rules.sla import calendar_from_config

# How far back to look for the latest slot: far more than any calendar leaves closed
# (a year with no open day is a config mistake; nothing is then due).
_LOOKBACK_DAYS = 370

WEEKDAYS_ALL_DAY = {day: "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri")}


@dataclass(frozen=True)
class DueDigest:
    period: str          # the slot's local date, ISO: the digest's name and key
    slot: datetime       # when it was due (UTC)
    since: datetime      # what it covers: from the previous slot, or the last one sent


def digest_calendar(config: Config) -> BusinessCalendar:
    """The calendar ``[digest] calendar`` names, else Monday-Friday in the digest zone."""
    if config.digest.calendar is not None:
        return calendar_from_config(config.calendars[config.digest.calendar])
    return BusinessCalendar(timezone=config.digest.timezone, hours=WEEKDAYS_ALL_DAY)


def latest_slot(config: DigestConfig, calendar: BusinessCalendar, now: datetime
                ) -> datetime | None:
    """The latest slot at or before ``now`` (UTC), or None if there is none in a year."""
    zone = ZoneInfo(config.timezone)
    today = now.astimezone(zone).date()
    for back in range(_LOOKBACK_DAYS):
        day = today - timedelta(days=back)
        if _is_slot_day(config, calendar, day):
            slot = _slot_instant(config, zone, day)
            if slot <= now:
                return slot
    return None


def previous_slot(config: DigestConfig, calendar: BusinessCalendar, slot: datetime
                  ) -> datetime | None:
    """The slot before ``slot``."""
    return latest_slot(config, calendar, slot - timedelta(seconds=1))


def due_digest(config: DigestConfig, calendar: BusinessCalendar, now: datetime,
               last_sent: str | None) -> DueDigest | None:
    """The digest to send now, given the period name of the last one sent (or None)."""
    slot = latest_slot(config, calendar, now)
    if slot is None:
        return None
    zone = ZoneInfo(config.timezone)
    period = slot.astimezone(zone).date().isoformat()
    if last_sent is not None and last_sent >= period:
        return None
    if last_sent is None:
        if slot.astimezone(zone).date() != now.astimezone(zone).date():
            return None
        before = previous_slot(config, calendar, slot)
        since = before if before is not None else slot
    else:
        since = _slot_instant(config, zone, date.fromisoformat(last_sent))
    return DueDigest(period=period, slot=slot, since=since)


def _is_slot_day(config: DigestConfig, calendar: BusinessCalendar, day: date) -> bool:
    if not _is_open_day(calendar, day):
        return False
    if config.period == "daily":
        return True
    # Weekly: the first open day of its ISO week.
    monday = day - timedelta(days=day.weekday())
    first = next((monday + timedelta(days=i) for i in range(7)
                  if _is_open_day(calendar, monday + timedelta(days=i))), None)
    return first == day


def _is_open_day(calendar: BusinessCalendar, day: date) -> bool:
    zone = ZoneInfo(calendar.timezone)
    start = datetime.combine(day, time(0), zone)
    end = datetime.combine(day + timedelta(days=1), time(0), zone)
    return next(iter(calendar.open_intervals(start, end)), None) is not None


def _slot_instant(config: DigestConfig, zone: ZoneInfo, day: date) -> datetime:
    hh, mm = (int(x) for x in config.at.split(":"))
    return datetime.combine(day, time(hh, mm), zone).astimezone(UTC)
