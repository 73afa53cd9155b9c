"""Staff commands at the top of a reply: workflow.commands.parse_commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postdesk.workflow.rules.commands import (
    DEFAULT_FOLLOWUP_TIME,
    MAX_FOLLOWUP_AHEAD,
    MAX_LOGGED_TIME,
    SETTABLE_STATUSES,
    TICKET_CREATION_COMMANDS,
    Assign,
    Cc,
    Chargeable,
    Command,
    CommandError,
    CommandParse,
    FollowUp,
    Internal,
    LogTime,
    SetOrg,
    SetPriority,
    SetRequester,
    SetStatus,
    is_email_address,
    looks_only_commands,
    parse_commands,
)

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")

# Tuesday 24 November 2026, 14:00 UTC. London is on GMT then, so local == UTC;
# New York is on EST (UTC-5, local 09:00); Sydney on AEDT (UTC+11, local Wed 01:00).
NOW = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def parse(text: str, *, now: datetime = NOW, tz: ZoneInfo = LONDON) -> CommandParse:
    return parse_commands(text, now=now, tz=tz)


def only_command(line: str, *, now: datetime = NOW, tz: ZoneInfo = LONDON) -> Command:
    result = parse(line, now=now, tz=tz)
    assert result.errors == []
    assert len(result.commands) == 1
    return result.commands[0]


def only_problem(line: str, *, now: datetime = NOW, tz: ZoneInfo = LONDON) -> str:
    result = parse(line, now=now, tz=tz)
    assert result.commands == []
    assert len(result.errors) == 1
    assert result.errors[0].line == line.strip()
    return result.errors[0].problem


def due(line: str, *, now: datetime = NOW, tz: ZoneInfo = LONDON) -> datetime:
    command = only_command(line, now=now, tz=tz)
    assert isinstance(command, FollowUp)
    assert command.due.tzinfo is UTC
    return command.due


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- the command block and the body ---------------------------------------------------


def test_message_without_commands_is_all_body() -> None:
    result = parse("Hi Alice,\n\nFixed now.\n")
    assert result == CommandParse(commands=[], body="Hi Alice,\n\nFixed now.\n", errors=[])


def test_empty_message() -> None:
    result = parse("")
    assert result == CommandParse(commands=[], body="", errors=[])
    assert looks_only_commands(result)


def test_commands_then_body() -> None:
    result = parse("#priority P1\n#status pending\n\nHi Alice,\nOn it.")
    assert result.commands == [SetPriority("P1"), SetStatus("pending")]
    assert result.body == "Hi Alice,\nOn it."
    assert result.errors == []
    assert not looks_only_commands(result)


def test_leading_and_interleaved_blank_lines_are_part_of_the_block() -> None:
    result = parse("\n  \n#priority P2\n\n\t\n#chargeable\n\n\nHello")
    assert result.commands == [SetPriority("P2"), Chargeable()]
    assert result.body == "Hello"


def test_block_ends_at_first_text_line_and_later_hashes_are_body() -> None:
    text = "#internal\nNote for the team.\n#priority P1\n#status closed\nsee #42"
    result = parse(text)
    assert result.commands == [Internal()]
    assert result.body == "Note for the team.\n#priority P1\n#status closed\nsee #42"
    assert result.errors == []


def test_hashtags_in_the_body_are_not_commands() -> None:
    result = parse("Thanks! #teamwork\n#priority P1")
    assert result.commands == []
    assert result.errors == []
    assert result.body == "Thanks! #teamwork\n#priority P1"


def test_quoted_command_line_is_body() -> None:
    result = parse("> #priority P1\nreply")
    assert result.commands == []
    assert result.body == "> #priority P1\nreply"


def test_only_commands() -> None:
    result = parse("#time 45m\n#status resolved\n\n\n")
    assert result.commands == [LogTime(timedelta(minutes=45)), SetStatus("resolved")]
    assert result.body == ""
    assert looks_only_commands(result)


def test_looks_only_commands_ignores_whitespace_body() -> None:
    assert looks_only_commands(CommandParse(commands=[Internal()], body=" \n\t\n", errors=[]))
    assert not looks_only_commands(CommandParse(commands=[Internal()], body=" x", errors=[]))


def test_crlf_and_cr_line_endings() -> None:
    result = parse("#priority P3\r\n\r\nHello\r\nthere\r\n")
    assert result.commands == [SetPriority("P3")]
    assert result.body == "Hello\nthere\n"
    result = parse("#chargeable\rBody")
    assert result.commands == [Chargeable()]
    assert result.body == "Body"


def test_byte_order_mark_before_first_command() -> None:
    result = parse("\ufeff#status open\nHi")
    assert result.commands == [SetStatus("open")]
    assert result.body == "Hi"


def test_indented_command_and_trailing_spaces() -> None:
    result = parse("   #priority   P2   \nHi")
    assert result.commands == [SetPriority("P2")]
    assert result.body == "Hi"


def test_body_keeps_its_own_indentation_and_trailing_newline() -> None:
    result = parse("#internal\n\n    code()\n\n")
    assert result.body == "    code()\n\n"


def test_keywords_are_case_insensitive_and_may_have_a_colon() -> None:
    result = parse("#PRIORITY p1\n#Status: Pending\n#priority:p2\n#TIME: 1H\nok")
    assert result.commands == [
        SetPriority("P1"),
        SetStatus("pending"),
        SetPriority("P2"),
        LogTime(timedelta(hours=1)),
    ]
    assert result.errors == []


def test_repeated_commands_are_kept_in_order() -> None:
    result = parse("#priority P1\n#time 10m\n#priority P3\n#time 5m")
    assert result.commands == [
        SetPriority("P1"),
        LogTime(timedelta(minutes=10)),
        SetPriority("P3"),
        LogTime(timedelta(minutes=5)),
    ]


def test_errors_do_not_stop_the_block() -> None:
    result = parse("#prio P1\n#status pending\n#time lots\n#chargeable\n\nBody #prio")
    assert result.commands == [SetStatus("pending"), Chargeable()]
    assert [error.line for error in result.errors] == ["#prio P1", "#time lots"]
    assert result.body == "Body #prio"


def test_error_names_the_line_as_written() -> None:
    result = parse("  #priority P7  \nHi")
    assert result.errors == [
        CommandError("#priority P7", "unknown priority 'P7'; use one of P1, P2, P3")
    ]


# --- unknown and empty command words ----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "word"),
    [
        ("#prio P1", "#prio"),
        ("#1 on my list", "#1"),
        ("#urgent", "#urgent"),
        ("#priorityP1", "#priorityP1"),
        ("#assignee dana", "#assignee"),
    ],
)
def test_unknown_command_word_is_an_error(line: str, word: str) -> None:
    problem = only_problem(line)
    assert problem.startswith(f"unknown command {word};")
    assert "#priority" in problem and "#followup" in problem


@pytest.mark.parametrize("line", ["#", "# Summary", "#   ", "#: P1"])
def test_hash_without_a_command_word_is_an_error(line: str) -> None:
    assert only_problem(line).startswith("no command word after '#'")


def test_unknown_command_line_is_not_body() -> None:
    result = parse("#1 on my list: fix the form\nThanks")
    assert result.commands == []
    assert result.body == "Thanks"


# --- #priority ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "priority"),
    [("#priority P1", "P1"), ("#priority p2", "P2"), ("#Priority P3", "P3")],
)
def test_priority(line: str, priority: str) -> None:
    assert only_command(line) == SetPriority(priority)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#priority P7", "unknown priority 'P7'; use one of P1, P2, P3"),
        ("#priority high", "unknown priority 'high'; use one of P1, P2, P3"),
        ("#priority P1 please", "unknown priority 'P1 please'; use one of P1, P2, P3"),
        ("#priority 1", "unknown priority '1'; use one of P1, P2, P3"),
        ("#priority", "missing priority; use one of P1, P2, P3"),
    ],
)
def test_priority_errors(line: str, problem: str) -> None:
    assert only_problem(line) == problem


# --- #status --------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["open", "pending", "awaiting_signoff", "resolved", "closed"])
def test_every_settable_status(status: str) -> None:
    assert only_command(f"#status {status}") == SetStatus(status)


def test_settable_statuses() -> None:
    assert SETTABLE_STATUSES == ("open", "pending", "awaiting_signoff", "resolved", "closed")


@pytest.mark.parametrize(
    "written", ["Awaiting-Signoff", "awaiting signoff", "AWAITING_SIGNOFF", "awaiting  -signoff"]
)
def test_awaiting_signoff_spellings(written: str) -> None:
    assert only_command(f"#status {written}") == SetStatus("awaiting_signoff")


@pytest.mark.parametrize(
    ("line", "bad"),
    [("#status new", "'new'"), ("#status done", "'done'"), ("#status open now", "'open now'")],
)
def test_status_errors(line: str, bad: str) -> None:
    assert only_problem(line) == (
        f"unknown status {bad}; use one of open, pending, awaiting_signoff, resolved, closed"
    )


def test_status_missing() -> None:
    assert only_problem("#status").startswith("missing status;")


# --- #assign --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "who"),
    [
        ("#assign me", "me"),
        ("#assign ME", "me"),
        ("#assign dana", "dana"),
        ("#assign Dana   Scully", "Dana Scully"),
        ("#assign O'Brien", "O'Brien"),
        ("#assign Dana@Agency.Example", "dana@agency.example"),
        ("#assign <dev1@agency.example>", "dev1@agency.example"),
    ],
)
def test_assign(line: str, who: str) -> None:
    assert only_command(line) == Assign(who)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#assign", "missing assignee; use me, an email address or a name"),
        ("#assign @dana", "'@dana' is not an email address"),
        ("#assign dana@", "'dana@' is not an email address"),
        ("#assign 42", "'42' is not an email address or a name"),
        ("#assign dana!", "'dana!' is not an email address or a name"),
    ],
)
def test_assign_errors(line: str, problem: str) -> None:
    assert only_problem(line) == problem


# --- #internal and #chargeable ----------------------------------------------------------


@pytest.mark.parametrize("line", ["#internal", "#INTERNAL", "#private", "#internal:"])
def test_internal(line: str) -> None:
    assert only_command(line) == Internal()


def test_internal_with_text_is_still_internal_and_reported() -> None:
    result = parse("#internal spoke to them by phone\nNotes")
    assert result.commands == [Internal()]
    assert result.errors == [
        CommandError(
            "#internal spoke to them by phone",
            "#internal takes no argument; the text after it was not kept "
            "(the message is still internal)",
        )
    ]
    assert result.body == "Notes"


def test_chargeable() -> None:
    assert only_command("#Chargeable") == Chargeable()


def test_chargeable_takes_no_argument() -> None:
    assert only_problem("#chargeable yes") == "#chargeable takes no argument (got 'yes')"


# --- #time ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "seconds"),
    [
        ("45m", 2700),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2H", 7200),
        ("90s", 90),
        ("1.5h", 5400),
        ("0.25h", 900),
        ("0.01h", 36),
        ("2.75 h", 9900),
        ("24h", 86400),
    ],
)
def test_time(argument: str, seconds: int) -> None:
    assert only_command(f"#time {argument}") == LogTime(timedelta(seconds=seconds))


@pytest.mark.parametrize("argument", ["99999999999999999999999h", "99999999999999999999.5h"])
def test_absurd_time_is_an_error_not_a_crash(argument: str) -> None:
    assert only_problem(f"#time {argument}") == (
        f"{argument!r} is more than 24h in one entry; check the unit"
    )


def test_max_logged_time() -> None:
    assert timedelta(hours=24) == MAX_LOGGED_TIME
    assert timedelta(days=366) == MAX_FOLLOWUP_AHEAD


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#time", "missing time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time lots", "'lots' is not a time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time 45", "'45' is not a time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time 1.5", "'1.5' is not a time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time 1,5h", "'1,5h' is not a time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time 1.555h", "'1.555h' is not a time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time -1h", "'-1h' is not a time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time 1.5m", "'1.5m' is not a time; use e.g. 45m, 1h30m or 1.5h"),
        ("#time 2d", "days are ambiguous for logged time; write hours, e.g. 7h30m"),
        ("#time 1d2h", "days are ambiguous for logged time; write hours, e.g. 7h30m"),
        ("#time 0m", "logged time must be more than zero"),
        ("#time 0.00h", "logged time must be more than zero"),
        ("#time 24h1s", "'24h1s' is more than 24h in one entry; check the unit"),
        ("#time 45h", "'45h' is more than 24h in one entry; check the unit"),
    ],
)
def test_time_errors(line: str, problem: str) -> None:
    assert only_problem(line) == problem


# --- #followup ------------------------------------------------------------------------


def test_default_followup_time_is_nine() -> None:
    assert (DEFAULT_FOLLOWUP_TIME.hour, DEFAULT_FOLLOWUP_TIME.minute) == (9, 0)


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("+2h", utc(2026, 11, 24, 16, 0)),
        ("2h", utc(2026, 11, 24, 16, 0)),
        ("+ 30m", utc(2026, 11, 24, 14, 30)),
        ("+1h30m", utc(2026, 11, 24, 15, 30)),
        ("+1d", utc(2026, 11, 25, 14, 0)),
        ("+1d2h", utc(2026, 11, 25, 16, 0)),
        ("+7d", utc(2026, 12, 1, 14, 0)),
        ("tomorrow", utc(2026, 11, 25, 9, 0)),
        ("Tomorrow 14:30", utc(2026, 11, 25, 14, 30)),
        ("tomorrow 7:05", utc(2026, 11, 25, 7, 5)),
        ("today 16:00", utc(2026, 11, 24, 16, 0)),
        ("16:00", utc(2026, 11, 24, 16, 0)),
        ("23:59", utc(2026, 11, 24, 23, 59)),
        ("wednesday 15:30", utc(2026, 11, 25, 15, 30)),
        ("friday", utc(2026, 11, 27, 9, 0)),
        ("Fri", utc(2026, 11, 27, 9, 0)),
        ("sunday", utc(2026, 11, 29, 9, 0)),
        ("mon", utc(2026, 11, 30, 9, 0)),
        # Today is Tuesday: "tuesday" is next week, even at an hour still to come.
        ("tue", utc(2026, 12, 1, 9, 0)),
        ("tuesday 18:00", utc(2026, 12, 1, 18, 0)),
        ("2026-11-25 10:00", utc(2026, 11, 25, 10, 0)),
        ("2026-11-25T10:00", utc(2026, 11, 25, 10, 0)),
        ("2026-11-25t10:00", utc(2026, 11, 25, 10, 0)),
        ("2026-11-25   9:15", utc(2026, 11, 25, 9, 15)),
        ("2026-11-25", utc(2026, 11, 25, 9, 0)),
        ("2027-02-01 00:00", utc(2027, 2, 1, 0, 0)),
    ],
)
def test_followup_in_london(argument: str, expected: datetime) -> None:
    assert due(f"#followup {argument}") == expected


def test_follow_up_spelling_with_hyphen() -> None:
    assert due("#follow-up +2h") == utc(2026, 11, 24, 16, 0)


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        # Local now is Tue 09:00 EST (UTC-5).
        ("2026-11-25 10:00", utc(2026, 11, 25, 15, 0)),
        ("tomorrow", utc(2026, 11, 25, 14, 0)),
        ("16:00", utc(2026, 11, 24, 21, 0)),
        ("+1d", utc(2026, 11, 25, 14, 0)),
        ("+2h", utc(2026, 11, 24, 16, 0)),
        ("friday 17:00", utc(2026, 11, 27, 22, 0)),
    ],
)
def test_followup_is_local_to_the_zone(argument: str, expected: datetime) -> None:
    assert due(f"#followup {argument}", tz=NEW_YORK) == expected


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        # Local now is Wed 25 Nov 01:00 AEDT (UTC+11), already the next day.
        ("tomorrow", utc(2026, 11, 25, 22, 0)),  # Thu 26 Nov 09:00 AEDT
        ("today 09:00", utc(2026, 11, 24, 22, 0)),  # Wed 25 Nov 09:00 AEDT
        ("wed", utc(2026, 12, 1, 22, 0)),  # Wed 2 Dec 09:00 AEDT
        ("thursday", utc(2026, 11, 25, 22, 0)),
    ],
)
def test_today_and_tomorrow_follow_the_local_date(argument: str, expected: datetime) -> None:
    assert due(f"#followup {argument}", tz=SYDNEY) == expected


def test_tomorrow_just_after_local_midnight_is_the_day_after() -> None:
    # 00:30 GMT on Wed 25 Nov: "tomorrow" is Thursday 09:00, not in 8.5 hours.
    assert due("#followup tomorrow", now=utc(2026, 11, 25, 0, 30)) == utc(2026, 11, 26, 9, 0)


def test_plus_one_day_keeps_the_wall_clock_across_spring_forward() -> None:
    # Sat 28 Mar 2026 10:00 GMT; clocks go forward on Sunday 29 Mar at 01:00 GMT.
    now = utc(2026, 3, 28, 10, 0)
    assert due("#followup +1d", now=now) == utc(2026, 3, 29, 9, 0)  # 10:00 BST
    assert due("#followup +24h", now=now) == utc(2026, 3, 29, 10, 0)  # 11:00 BST


def test_plus_one_day_keeps_the_wall_clock_across_fall_back() -> None:
    # Sat 24 Oct 2026 10:00 UTC is 11:00 BST; clocks go back on Sunday 25 Oct.
    now = utc(2026, 10, 24, 10, 0)
    assert due("#followup +1d", now=now) == utc(2026, 10, 25, 11, 0)  # 11:00 GMT
    assert due("#followup +24h", now=now) == utc(2026, 10, 25, 10, 0)  # 10:00 GMT


def test_plus_days_then_hours_across_spring_forward() -> None:
    # +1d lands on Sun 10:00 BST (09:00 UTC), then 2 elapsed hours.
    assert due("#followup +1d2h", now=utc(2026, 3, 28, 10, 0)) == utc(2026, 3, 29, 11, 0)


def test_relative_followup_during_the_repeated_hour() -> None:
    # 01:30 UTC on 25 Oct 2026 is the second 01:30 in London (GMT); +2h is 03:30 UTC,
    # not two hours after the first 01:30 (BST).
    assert due("#followup +2h", now=utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 25, 3, 30)
    assert due("#followup +30m", now=utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 25, 1, 15)


def test_local_time_in_the_spring_forward_gap_moves_later() -> None:
    # 01:30 on 29 Mar 2026 does not exist in London; read with GMT it is 02:30 BST.
    now = utc(2026, 3, 20, 12, 0)
    assert due("#followup 2026-03-29 01:30", now=now) == utc(2026, 3, 29, 1, 30)


def test_ambiguous_local_time_means_the_first_occurrence() -> None:
    # 01:30 on 25 Oct 2026 happens twice in London; the first is 01:30 BST = 00:30 UTC.
    now = utc(2026, 10, 20, 12, 0)
    assert due("#followup 2026-10-25 01:30", now=now) == utc(2026, 10, 25, 0, 30)


def test_followup_new_york_dst_date() -> None:
    # 8 Mar 2026 is New York's spring-forward day; 10:00 EDT is 14:00 UTC.
    now = utc(2026, 3, 1, 12, 0)
    assert due("#followup 2026-03-08 10:00", now=now, tz=NEW_YORK) == utc(2026, 3, 8, 14, 0)
    assert due("#followup 2026-03-07 10:00", now=now, tz=NEW_YORK) == utc(2026, 3, 7, 15, 0)


@pytest.mark.parametrize(
    ("argument", "shown"),
    [
        ("2026-11-24 13:59", "2026-11-24 13:59 GMT"),
        ("2026-11-24 14:00", "2026-11-24 14:00 GMT"),  # now is not the future
        ("2025-01-01", "2025-01-01 09:00 GMT"),
        ("today 09:00", "2026-11-24 09:00 GMT"),
        ("9:05", "2026-11-24 09:05 GMT"),
        ("+0m", "2026-11-24 14:00 GMT"),
    ],
)
def test_followup_in_the_past_is_an_error(argument: str, shown: str) -> None:
    assert only_problem(f"#followup {argument}") == f"follow-up time {shown} is not in the future"


def test_followup_past_error_shows_local_time() -> None:
    problem = only_problem("#followup 08:00", tz=NEW_YORK)
    assert problem == "follow-up time 2026-11-24 08:00 EST is not in the future"


@pytest.mark.parametrize(
    ("argument", "problem"),
    [
        ("2026-02-30 10:00", "no such date: '2026-02-30 10:00'"),
        ("2026-13-01", "no such date: '2026-13-01'"),
        ("25:00", "no such time of day: 25:00"),
        ("tomorrow 24:00", "no such time of day: 24:00"),
        ("2026-11-25 10:61", "no such time of day: 10:61"),
        ("today", "today needs a time, e.g. today 16:00"),
    ],
)
def test_followup_malformed_date_or_time(argument: str, problem: str) -> None:
    assert only_problem(f"#followup {argument}") == problem


@pytest.mark.parametrize(
    "argument",
    ["soon", "next week", "-2h", "2026-11-25 10:00:00", "25/11/2026", "in 2h", "friyay", "2"],
)
def test_followup_unrecognised_forms(argument: str) -> None:
    assert only_problem(f"#followup {argument}") == (
        f"{argument!r} is not a follow-up time; use e.g. +2h, +1d, tomorrow, "
        "tomorrow 14:00, friday, 16:00, 2026-11-25 10:00"
    )


def test_followup_up_to_a_year_ahead() -> None:
    assert due("#followup 2027-11-25 14:00") == utc(2027, 11, 25, 14, 0)  # 366 days
    assert due("#followup +366d") == utc(2027, 11, 25, 14, 0)


@pytest.mark.parametrize(
    ("argument", "problem"),
    [
        ("2027-11-25 14:01", "follow-up time 2027-11-25 14:01 GMT is more than a year ahead"),
        ("2062-11-25", "follow-up time 2062-11-25 09:00 GMT is more than a year ahead"),
        ("+367d", "follow-up time 2027-11-26 14:00 GMT is more than a year ahead"),
        # 9000h is 375 days.
        ("+9000h", "follow-up time 2027-12-04 14:00 GMT is more than a year ahead"),
        ("+999999999d", "'+999999999d' is too far ahead"),
        ("99999999999999999999h", "'99999999999999999999h' is too far ahead"),
        ("9999-12-31 23:59", "follow-up time 9999-12-31 23:59 GMT is more than a year ahead"),
    ],
)
def test_followup_too_far_ahead(argument: str, problem: str) -> None:
    assert only_problem(f"#followup {argument}").startswith(problem)


def test_followup_at_the_end_of_time_west_of_utc() -> None:
    # 9999-12-31 23:59 in New York is past the largest datetime in UTC.
    assert only_problem("#followup 9999-12-31 23:59", tz=NEW_YORK) == (
        "'9999-12-31 23:59' is too far ahead"
    )


def test_followup_missing_argument() -> None:
    assert only_problem("#followup").startswith("missing follow-up time;")


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_commands("#followup +1h", now=datetime(2026, 11, 24, 14, 0), tz=LONDON)


# --- #cc, #org, #requester ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "addresses"),
    [
        ("#cc alice@client.example", ["alice@client.example"]),
        ("#cc Alice@Client.Example", ["alice@client.example"]),
        ("#cc <bob@client.example>", ["bob@client.example"]),
        ("#cc a@x.example, b@y.example", ["a@x.example", "b@y.example"]),
        (
            "#cc a@x.example;b@y.example  c.d+tag@z.example",
            ["a@x.example", "b@y.example", "c.d+tag@z.example"],
        ),
    ],
)
def test_cc(line: str, addresses: list[str]) -> None:
    result = parse(line)
    assert result.errors == []
    assert result.commands == [Cc(address) for address in addresses]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#cc not-an-email", "'not-an-email' is not an email address"),
        ("#cc a@x.example, nope", "'nope' is not an email address"),
        ("#cc a@localhost", "'a@localhost' is not an email address"),
        ("#cc", "missing address to copy in"),
    ],
)
def test_cc_errors_reject_the_whole_line(line: str, problem: str) -> None:
    assert only_problem(line) == problem


@pytest.mark.parametrize(
    ("line", "slug"), [("#org clientco", "clientco"), ("#org Client-Co_2", "client-co_2")]
)
def test_org(line: str, slug: str) -> None:
    assert only_command(line) == SetOrg(slug)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#org", "missing org slug"),
        ("#org client co", "'client co' is not an org slug (letters, digits, - and _)"),
        ("#org -clientco", "'-clientco' is not an org slug (letters, digits, - and _)"),
        ("#org client.co", "'client.co' is not an org slug (letters, digits, - and _)"),
    ],
)
def test_org_errors(line: str, problem: str) -> None:
    assert only_problem(line) == problem


def test_requester() -> None:
    assert only_command("#requester Alice@Client.Example") == SetRequester("alice@client.example")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#requester", "missing requester address"),
        ("#requester alice", "'alice' is not an email address"),
        ("#requester a@x.example b@y.example", "'a@x.example b@y.example' is not an email address"),
    ],
)
def test_requester_errors(line: str, problem: str) -> None:
    assert only_problem(line) == problem


def test_ticket_creation_commands() -> None:
    assert (SetOrg, SetRequester) == TICKET_CREATION_COMMANDS


def test_staff_started_ticket() -> None:
    text = "#org clientco\n#requester alice@client.example\n#priority P2\n\nHi Alice,"
    result = parse(text)
    assert result.commands == [
        SetOrg("clientco"),
        SetRequester("alice@client.example"),
        SetPriority("P2"),
    ]
    assert result.body == "Hi Alice,"


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("a@b.example", True),
        ("first.last+tag@sub.domain.example", True),
        ("o'neil@x.example", True),
        ("a@b", False),
        ("a@-b.example", False),
        ("a@b-.example", False),
        ("a@b..example", False),
        (".a@b.example", False),
        ("a.@b.example", False),
        ("a..b@x.example", False),
        ("a b@x.example", False),
        ("a@b@c.example", False),
        ("@b.example", False),
        ("", False),
    ],
)
def test_is_email_address(address: str, valid: bool) -> None:
    assert is_email_address(address) is valid


# --- a full reply ----------------------------------------------------------------------


def test_full_staff_reply() -> None:
    text = (
        "\n"
        "#priority p1\n"
        "#assign me\n"
        "#time 1.5h\n"
        "#followup tomorrow 10:00\n"
        "#cc ops@partner.example\n"
        "#chargeable\n"
        "#prio P2\n"
        "\n"
        "Hi Alice,\n"
        "\n"
        "The site is back up. #relief\n"
    )
    result = parse(text)
    assert result.commands == [
        SetPriority("P1"),
        Assign("me"),
        LogTime(timedelta(minutes=90)),
        FollowUp(utc(2026, 11, 25, 10, 0)),
        Cc("ops@partner.example"),
        Chargeable(),
    ]
    assert len(result.errors) == 1
    assert result.errors[0].line == "#prio P2"
    assert result.body == "Hi Alice,\n\nThe site is back up. #relief\n"
    assert not looks_only_commands(result)


# --- properties ------------------------------------------------------------------------

_BODY_LINE = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\ufeff", blacklist_categories=("Cs",)),
    max_size=30,
)


@given(st.text(max_size=200))
def test_any_text_parses_without_raising(text: str) -> None:
    result = parse(text)
    assert isinstance(result, CommandParse)
    for error in result.errors:
        assert error.line.startswith("#")


@given(
    first=_BODY_LINE.filter(lambda line: line.strip() and not line.strip().startswith("#")),
    rest=st.lists(_BODY_LINE, max_size=5),
)
def test_body_after_the_block_is_returned_unchanged(first: str, rest: list[str]) -> None:
    body = "\n".join([first, *rest])
    result = parse("#priority P2\n\n#chargeable\n\n" + body)
    assert result.commands == [SetPriority("P2"), Chargeable()]
    assert result.errors == []
    assert result.body == body


@given(
    first=_BODY_LINE.filter(lambda line: line.strip() and not line.strip().startswith("#")),
    rest=st.lists(_BODY_LINE, max_size=5),
)
def test_text_that_does_not_start_with_a_hash_has_no_commands(first: str, rest: list[str]) -> None:
    result = parse("\n".join([first, *rest]))
    assert result.commands == []
    assert result.errors == []


_KEYWORD = st.sampled_from(
    ["priority", "status", "assign", "internal", "time", "followup", "chargeable", "cc", "org",
     "requester", "follow-up", "private", "prio"]
)  # fmt: skip
_ARGUMENT = st.one_of(
    _BODY_LINE,
    st.from_regex(r"\+?[0-9]{1,25}(\.[0-9]{1,3})?[dhms]", fullmatch=True),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{1,2}:[0-9]{2})?", fullmatch=True),
)


@given(st.lists(st.tuples(_KEYWORD, _ARGUMENT), min_size=1, max_size=4), st.sampled_from(
    [LONDON, NEW_YORK, SYDNEY]
))  # fmt: skip
def test_any_command_arguments_give_a_command_or_an_error(
    lines: list[tuple[str, str]], tz: ZoneInfo
) -> None:
    text = "\n".join(f"#{keyword} {argument}" for keyword, argument in lines) + "\n\nBody"
    result = parse(text, tz=tz)
    # Every line yields at least one command or an error (#internal with text: both).
    assert len(result.commands) + len(result.errors) >= len(lines)
    assert result.body == "Body"
    for command in result.commands:
        if isinstance(command, FollowUp):
            assert NOW < command.due <= NOW + MAX_FOLLOWUP_AHEAD
        if isinstance(command, LogTime):
            assert timedelta(0) < command.duration <= MAX_LOGGED_TIME
