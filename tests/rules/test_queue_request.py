from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postdesk.workflow.rules.due_text import due_phrase
from postdesk.workflow.rules.queue import queue_request


def test_queue_and_mine_ask_for_the_staff_members_own_tickets() -> None:
    assert queue_request("queue") == queue_request(" Mine ") == "mine"


def test_all_asks_for_the_unassigned_tickets_too() -> None:
    assert queue_request("ALL") == "all"


def test_any_other_subject_is_not_a_queue_request() -> None:
    assert [queue_request(s) for s in (None, "", "Re: queue", "queue please")] == [None] * 4


def test_due_phrases_say_how_long_is_left_or_how_long_it_is_overdue() -> None:
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert due_phrase(now, now + timedelta(minutes=50)) == "in 50m"
    assert due_phrase(now, now + timedelta(hours=4, minutes=45)) == "in 4h 45m"
    assert due_phrase(now, now - timedelta(days=1, hours=3)) == "overdue by 1d 3h"
