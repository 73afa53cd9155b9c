"""Staff commands at the top of a staff member's email reply.

Pure rules: no I/O, and the current time is always a parameter.

Grammar
-------
The *command block* is the top of the message: any number of command lines and blank
lines. It ends at the first line that is neither; that line and everything after it is
the body. A hashtag further down the body is text, never a command.

A command line is any line whose first non-blank character is ``#``. Every such line in
the block is a command *attempt*: one that is not understood (``#prio P1``,
``#1 on my list``, ``# Summary``) is reported as an error rather than passed on as body
text, because a mistyped ``#internal`` sent to the client as prose is the worst outcome.
Erroneous lines are consumed by the block either way; the caller should tell the staff
member about every error and, while there are errors, not send the body to the client.

Keywords are case-insensitive and may be followed by a colon (``#Priority: p1``,
``#priority:p1``).
Arguments are case-insensitive; email addresses and slugs come out lowercased, names as
written (inner whitespace collapsed).

=================  ==========================================================
``#priority P1``   P1, P2 or P3
``#status S``      open, pending, awaiting_signoff (or awaiting-signoff, awaiting signoff),
                   resolved, closed. ``new`` cannot be set.
``#assign WHO``    ``me``, an email address, or a name (``dana``, ``Dana Scully``)
``#internal``      also ``#private``; see below about extra text
``#time T``        ``45m``, ``1h30m``, ``1h 30m``, or decimal hours ``1.5h`` (up to two
                   decimals; 0.01h is 36 seconds). No days (a "day" of work is
                   ambiguous), no bare numbers, more than zero, at most 24h per line.
``#followup W``    also ``#follow-up``; see below
``#chargeable``    no argument
``#cc ADDR...``    one or more addresses separated by commas, semicolons or spaces,
                   ``<a@b.example>`` accepted; one bad address rejects the whole line
``#org SLUG``      for a ticket staff start; lowercase letters, digits, ``-``, ``_``
``#requester A``   for a ticket staff start; one address
``#reply NAME``    a canned reply (a slug), inserted above the staff member's own text
``#merge PD-n``    merge the ticket replied to into ticket n (``PD-12``, ``[PD-12]``,
                   ``#12`` or ``12``; the prefix is the caller's to check)
``#split``         no argument; the quoted client message becomes a new ticket
=================  ==========================================================

Follow-up times (``tz`` is the org's or staff member's zone; the result is UTC):

* ``+2h``, ``+30m``, ``+1h30m`` — that much elapsed time after ``now``. The ``+`` may be
  left out (``2h``).
* ``+1d``, ``+3d2h`` — calendar days keep the local wall-clock time (``+1d`` at 10:00 is
  10:00 tomorrow, also across a DST change), then hours/minutes are added as elapsed time.
  No business calendar is consulted here: ``+1d`` on a Friday is Saturday.
* ``tomorrow`` — 09:00 local on the next local date: a follow-up promised "tomorrow" is
  meant for the working morning, not for the hour the reply happened to be written (a
  23:40 reply would otherwise schedule 23:40). ``tomorrow 14:00`` names the time.
* ``today 16:00`` or just ``16:00`` — that time on the current local date.
* ``monday`` / ``mon`` … ``sunday`` / ``sun`` — the next such date strictly after today,
  09:00, or at a given time (``friday 15:30``). On a Monday, ``monday`` is a week ahead.
* ``2026-11-25 10:00`` (or ``2026-11-25T10:00``) — local time; a bare date means 09:00.

A local time that does not exist (inside a spring-forward gap) is read with the offset
before the change, i.e. it lands the length of the gap later; an ambiguous local time
(fall-back) means its first occurrence. A follow-up that is not strictly after ``now``
is an error, and so is one more than 366 days ahead (a mistyped year, not a plan).

Repeated commands are all kept, in order; applying them in order makes the last
``#priority``/``#status``/``#assign``/``#followup`` win and adds up the ``#time`` lines.

``#internal`` with text after it (``#internal spoke to them by phone``) still yields
``Internal()`` *and* an error: failing open would send an internal note to the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from postdesk.workflow.rules.durations import DurationError, parse_duration
from postdesk.workflow.rules.priority import PRIORITIES

__all__ = [
    "Assign",
    "Cc",
    "Chargeable",
    "Command",
    "CommandError",
    "CommandParse",
    "DEFAULT_FOLLOWUP_TIME",
    "FollowUp",
    "Internal",
    "LogTime",
    "MAX_FOLLOWUP_AHEAD",
    "MAX_LOGGED_TIME",
    "SETTABLE_STATUSES",
    "SetOrg",
    "SetPriority",
    "SetRequester",
    "SetStatus",
    "CannedReply",
    "Merge",
    "Split",
    "TICKET_CREATION_COMMANDS",
    "is_email_address",
    "looks_only_commands",
    "parse_commands",
]


@dataclass(frozen=True)
class SetPriority:
    priority: str  # "P1" | "P2" | "P3"


@dataclass(frozen=True)
class SetStatus:
    status: str  # one of SETTABLE_STATUSES


@dataclass(frozen=True)
class Assign:
    # "me", an email address (lowercased), or a name as written; resolving it to a staff
    # member is the caller's job, since only the caller knows the staff list.
    who: str


@dataclass(frozen=True)
class Internal:
    pass


@dataclass(frozen=True)
class LogTime:
    duration: timedelta


@dataclass(frozen=True)
class FollowUp:
    due: datetime  # aware, UTC


@dataclass(frozen=True)
class Chargeable:
    pass


@dataclass(frozen=True)
class Cc:
    email: str  # lowercased


@dataclass(frozen=True)
class SetOrg:
    slug: str


@dataclass(frozen=True)
class SetRequester:
    email: str  # lowercased


@dataclass(frozen=True)
class CannedReply:
    name: str  # a slug: the reply template replies/NAME.txt


@dataclass(frozen=True)
class Merge:
    prefix: str | None  # as written ("PD"), None when only the number was given
    number: int


@dataclass(frozen=True)
class Split:
    pass


Command = (
    SetPriority
    | SetStatus
    | Assign
    | Internal
    | LogTime
    | FollowUp
    | Chargeable
    | Cc
    | SetOrg
    | SetRequester
    | CannedReply
    | Merge
    | Split
)

# Only meaningful on a ticket a staff member starts; the parser cannot know whether the
# reply is on an existing ticket, so the caller rejects these there.
TICKET_CREATION_COMMANDS: tuple[type, ...] = (SetOrg, SetRequester)


@dataclass(frozen=True)
class CommandError:
    line: str  # the command line as written (surrounding whitespace removed)
    problem: str


@dataclass(frozen=True)
class CommandParse:
    commands: list[Command] = field(default_factory=list)
    body: str = ""
    errors: list[CommandError] = field(default_factory=list)


SETTABLE_STATUSES: tuple[str, ...] = (
    "open",
    "pending",
    "awaiting_signoff",
    "resolved",
    "closed",
)
DEFAULT_FOLLOWUP_TIME = time(9, 0)
# A single entry above a day's work is far more likely a wrong unit (45h for 45m).
MAX_LOGGED_TIME = timedelta(hours=24)
# Further out than this is far more likely a typo in the year than a real promise.
MAX_FOLLOWUP_AHEAD = timedelta(days=366)

_COMMAND_LINE = re.compile(r"^#(?P<keyword>[^\s:]*):?\s*(?P<argument>.*?)\s*$", re.DOTALL)
_EMAIL = re.compile(
    r"^(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)"
    r"@(?P<domain>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+)$"
)
_NAME = re.compile(r"^[^\W\d_][\w .'-]*$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_DECIMAL_HOURS = re.compile(r"^(?P<hours>\d+\.\d{1,2})\s*h$", re.IGNORECASE)
_CLOCK = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})"
_ISO_LOCAL = re.compile(
    rf"^(?P<year>\d{{4}})-(?P<month>\d{{2}})-(?P<day>\d{{2}})(?:(?:\s+|T){_CLOCK})?$", re.IGNORECASE
)
_NAMED_DAY = re.compile(rf"^(?P<day>[a-z]+)(?:\s+{_CLOCK})?$")
_CLOCK_ONLY = re.compile(rf"^{_CLOCK}$")
_WEEKDAYS = {
    name: number
    for number, names in enumerate(
        (
            ("monday", "mon"),
            ("tuesday", "tue", "tues"),
            ("wednesday", "wed"),
            ("thursday", "thu", "thur", "thurs"),
            ("friday", "fri"),
            ("saturday", "sat"),
            ("sunday", "sun"),
        )
    )
    for name in names
}
_FOLLOWUP_FORMS = "use e.g. +2h, +1d, tomorrow, tomorrow 14:00, friday, 16:00, 2026-11-25 10:00"


_EMPTY_COMMAND = (
    "no command word after '#' (lines starting with # at the top are read as commands); "
    "write e.g. #status pending"
)


class _Problem(Exception):
    """Why one command line could not be understood; becomes a CommandError."""


def is_email_address(text: str) -> bool:
    """A pragmatic check of a bare address (``local@domain.tld``), not full RFC 5322."""
    match = _EMAIL.match(text)
    if match is None:
        return False
    local = match["local"]
    return not (local.startswith(".") or local.endswith(".") or ".." in local)


def _email_argument(text: str) -> str:
    address = text.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if not is_email_address(address):
        raise _Problem(f"{text!r} is not an email address")
    return address.lower()


def _no_argument(keyword: str, argument: str) -> None:
    if argument:
        raise _Problem(f"#{keyword} takes no argument (got {argument!r})")


def _priority(argument: str) -> list[Command]:
    if not argument:
        raise _Problem(f"missing priority; use one of {', '.join(PRIORITIES)}")
    priority = argument.upper()
    if priority not in PRIORITIES:
        raise _Problem(f"unknown priority {argument!r}; use one of {', '.join(PRIORITIES)}")
    return [SetPriority(priority)]


def _status(argument: str) -> list[Command]:
    choices = ", ".join(SETTABLE_STATUSES)
    if not argument:
        raise _Problem(f"missing status; use one of {choices}")
    status = "_".join(argument.lower().replace("-", " ").split())
    if status not in SETTABLE_STATUSES:
        raise _Problem(f"unknown status {argument!r}; use one of {choices}")
    return [SetStatus(status)]


def _assign(argument: str) -> list[Command]:
    if not argument:
        raise _Problem("missing assignee; use me, an email address or a name")
    if argument.lower() == "me":
        return [Assign("me")]
    if "@" in argument:
        return [Assign(_email_argument(argument))]
    if not _NAME.match(argument):
        raise _Problem(f"{argument!r} is not an email address or a name")
    return [Assign(" ".join(argument.split()))]


def _logged_time(argument: str) -> timedelta:
    decimal_hours = _DECIMAL_HOURS.match(argument)
    if decimal_hours:
        return timedelta(seconds=int(Decimal(decimal_hours["hours"]) * 3600))
    try:
        duration = parse_duration(argument)
    except DurationError:
        raise _Problem(f"{argument!r} is not a time; use e.g. 45m, 1h30m or 1.5h") from None
    if duration.days:
        raise _Problem("days are ambiguous for logged time; write hours, e.g. 7h30m")
    return duration.clock


def _log_time(argument: str) -> list[Command]:
    if not argument:
        raise _Problem("missing time; use e.g. 45m, 1h30m or 1.5h")
    try:
        logged = _logged_time(argument)
    except OverflowError:
        raise _Problem(f"{argument!r} is more than 24h in one entry; check the unit") from None
    if logged <= timedelta(0):
        raise _Problem("logged time must be more than zero")
    if logged > MAX_LOGGED_TIME:
        raise _Problem(f"{argument!r} is more than 24h in one entry; check the unit")
    return [LogTime(logged)]


def _local_instant(day: date, clock: time, tz: ZoneInfo) -> datetime:
    # fold=0: first occurrence of an ambiguous time; pre-change offset inside a gap.
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


def _clock(hour: str | None, minute: str | None) -> time:
    if hour is None or minute is None:
        return DEFAULT_FOLLOWUP_TIME
    try:
        return time(int(hour), int(minute))
    except ValueError:
        raise _Problem(f"no such time of day: {hour}:{minute}") from None


def _followup_due(argument: str, now: datetime, tz: ZoneInfo) -> datetime:
    text = " ".join(argument.lower().split())
    local_now = now.astimezone(tz)
    today = local_now.date()

    if match := _ISO_LOCAL.match(text):
        try:
            day = date(int(match["year"]), int(match["month"]), int(match["day"]))
        except ValueError:
            raise _Problem(f"no such date: {argument!r}") from None
        return _local_instant(day, _clock(match["hour"], match["minute"]), tz)

    if match := _CLOCK_ONLY.match(text):
        return _local_instant(today, _clock(match["hour"], match["minute"]), tz)

    if match := _NAMED_DAY.match(text):
        name = match["day"]
        if name == "today":
            if match["hour"] is None:
                raise _Problem("today needs a time, e.g. today 16:00")
            return _local_instant(today, _clock(match["hour"], match["minute"]), tz)
        if name == "tomorrow":
            day = today + timedelta(days=1)
            return _local_instant(day, _clock(match["hour"], match["minute"]), tz)
        if name in _WEEKDAYS:
            ahead = (_WEEKDAYS[name] - today.weekday() - 1) % 7 + 1
            day = today + timedelta(days=ahead)
            return _local_instant(day, _clock(match["hour"], match["minute"]), tz)

    relative = text[1:].strip() if text.startswith("+") else text
    try:
        duration = parse_duration(relative)
    except DurationError:
        raise _Problem(f"{argument!r} is not a follow-up time; {_FOLLOWUP_FORMS}") from None
    start = now
    if duration.days:
        # Adding to an aware datetime moves its local wall clock (Python does not go
        # through UTC for that), so "+1d" keeps the local hour across a DST change. Only
        # when there are days: the sum has fold=0, which would move a "now" in the second
        # of two repeated hours back by an hour.
        start = local_now + timedelta(days=duration.days)
    return start.astimezone(UTC) + duration.clock


def _followup(argument: str, now: datetime, tz: ZoneInfo) -> list[Command]:
    if not argument:
        raise _Problem(f"missing follow-up time; {_FOLLOWUP_FORMS}")
    try:
        due = _followup_due(argument, now, tz)
    except OverflowError:
        raise _Problem(f"{argument!r} is too far ahead") from None
    if due - now > MAX_FOLLOWUP_AHEAD:
        local = due.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
        raise _Problem(f"follow-up time {local} is more than a year ahead; check the date")
    if due <= now:
        local = due.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
        raise _Problem(f"follow-up time {local} is not in the future")
    return [FollowUp(due)]


def _cc(argument: str) -> list[Command]:
    if not argument:
        raise _Problem("missing address to copy in")
    addresses = [part for part in re.split(r"[,;\s]+", argument) if part]
    # All or nothing: copying in half of a list that had a typo would surprise.
    return [Cc(_email_argument(address)) for address in addresses]


def _slug_argument(argument: str, what: str, missing: str) -> str:
    """A lower-cased name of letters, digits, - and _ (an org slug, a reply name)."""
    if not argument:
        raise _Problem(missing)
    slug = argument.lower()
    if not _SLUG.match(slug):
        raise _Problem(f"{argument!r} is not {what} (letters, digits, - and _)")
    return slug


def _org(argument: str) -> list[Command]:
    return [SetOrg(_slug_argument(argument, "an org slug", "missing org slug"))]


def _requester(argument: str) -> list[Command]:
    if not argument:
        raise _Problem("missing requester address")
    return [SetRequester(_email_argument(argument))]


_TICKET_REF = re.compile(
    r"^\[?(?:(?P<prefix>[A-Za-z][A-Za-z0-9]{0,9})-|#)?(?P<number>\d{1,18})\]?$")


def _reply(argument: str) -> list[Command]:
    return [CannedReply(_slug_argument(argument, "a canned reply name",
                                       "missing canned reply name (e.g. #reply received)"))]


def _merge(argument: str) -> list[Command]:
    match = _TICKET_REF.match(argument)
    if not match:
        raise _Problem("name the ticket to merge into, e.g. #merge PD-12")
    prefix = match["prefix"].upper() if match["prefix"] else None
    return [Merge(prefix, int(match["number"]))]


_KEYWORDS = (
    "priority",
    "status",
    "assign",
    "internal",
    "time",
    "followup",
    "chargeable",
    "cc",
    "org",
    "requester",
    "reply",
    "merge",
    "split",
)
_ALIASES = {"private": "internal", "follow-up": "followup"}


def _parse_line(keyword: str, argument: str, now: datetime, tz: ZoneInfo) -> list[Command]:
    if keyword == "priority":
        return _priority(argument)
    if keyword == "status":
        return _status(argument)
    if keyword == "assign":
        return _assign(argument)
    if keyword == "time":
        return _log_time(argument)
    if keyword == "followup":
        return _followup(argument, now, tz)
    if keyword == "chargeable":
        _no_argument(keyword, argument)
        return [Chargeable()]
    if keyword == "cc":
        return _cc(argument)
    if keyword == "org":
        return _org(argument)
    if keyword == "requester":
        return _requester(argument)
    if keyword == "reply":
        return _reply(argument)
    if keyword == "merge":
        return _merge(argument)
    if keyword == "split":
        _no_argument(keyword, argument)
        return [Split()]
    raise AssertionError(f"keyword without a parser: {keyword}")  # pragma: no cover


def parse_commands(text: str, *, now: datetime, tz: ZoneInfo) -> CommandParse:
    """Split a staff reply into its leading commands, the body after them, and errors."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("parse_commands needs a timezone-aware now")
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[Command] = []
    errors: list[CommandError] = []

    body_start = len(lines)
    for index, raw_line in enumerate(lines):
        line = raw_line.strip()
        if not line:
            continue
        if not line.startswith("#"):
            body_start = index
            break
        match = _COMMAND_LINE.match(line)
        assert match is not None  # the pattern accepts any line starting with "#"
        written = match["keyword"]
        argument = match["argument"] or ""
        keyword = _ALIASES.get(written.lower(), written.lower())
        if not written:
            errors.append(CommandError(line, _EMPTY_COMMAND))
            continue
        if keyword not in _KEYWORDS:
            errors.append(
                CommandError(
                    line,
                    f"unknown command #{written}; known commands: "
                    + ", ".join(f"#{known}" for known in _KEYWORDS),
                )
            )
            continue
        if keyword == "internal":
            # Mark internal even when the line is wrong, so a note never leaks to the client.
            commands.append(Internal())
            if argument:
                errors.append(
                    CommandError(
                        line,
                        f"#{written} takes no argument; the text after it "
                        "was not kept (the message is still internal)",
                    )
                )
            continue
        try:
            commands.extend(_parse_line(keyword, argument, now, tz))
        except _Problem as problem:
            errors.append(CommandError(line, str(problem)))

    return CommandParse(commands=commands, body="\n".join(lines[body_start:]), errors=errors)


def looks_only_commands(parse: CommandParse) -> bool:
    """True when nothing but commands (and whitespace) was written: nothing to send on."""
    return not parse.body.strip()
