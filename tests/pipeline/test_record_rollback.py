"""An email processed on its own records in one transaction with no savepoint (two round
trips fewer per email). When a handler quarantines it after writing (the flood limit is
the last handler, after the ticket, its message, clocks and drafts), that transaction is
rolled back and the quarantine is recorded alone: the email leaves nothing behind but
its quarantined raw message, exactly as when a savepoint was rolled back."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select

from postdesk.storage.models import Contact, Event, Message, Outbox, SlaClock, Ticket
from tests.support import make_email

FLOOD = 2


def counts(desk: Any) -> dict[str, int]:
    with desk.app.sessions() as session:
        return {model.__name__: session.scalar(select(func.count()).select_from(model)) or 0
                for model in (Ticket, Message, Event, SlaClock, Outbox, Contact)}


@pytest.mark.backends("sqlite", "postgres-redis")
def test_an_email_on_its_own_is_recorded_without_a_savepoint(make_desk: Any) -> None:
    desk = make_desk(workers=False)
    desk.send(make_email(subject="Checkout broken"))
    [raw] = desk.raws()
    seen: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen.append(sql.split(None, 1)[0].upper())

    event.listen(desk.app.engine, "before_cursor_execute", statement)
    try:
        desk.app.handle_inbound(raw["id"])
    finally:
        event.remove(desk.app.engine, "before_cursor_execute", statement)
    assert [t["status"] for t in desk.tickets()] == ["new"]
    assert "INSERT" in seen
    assert "SAVEPOINT" not in seen and "RELEASE" not in seen


@pytest.mark.backends("sqlite", "postgres-redis")
def test_a_flood_found_after_recording_leaves_only_its_quarantined_raw_message(
        make_desk: Any) -> None:
    desk = make_desk(workers=False, desk_extra=f"flood_tickets_per_hour = {FLOOD}")
    for i in range(FLOOD):
        desk.send(make_email(sender="bot@client.example", subject=f"Alert {i}"))
    for raw in desk.raws():
        desk.app.handle_inbound(raw["id"])
    before = counts(desk)
    desk.send(make_email(sender="bot@client.example", subject="One too many"))
    last = desk.raws()[-1]

    desk.app.handle_inbound(last["id"])

    assert counts(desk) == before
    raw = desk.raws()[-1]
    assert (raw["status"], raw["reason"]) == ("quarantined", "flood")
    assert "opened 2 tickets" in raw["detail"]
    # Processed once: a redelivered job changes nothing.
    desk.app.handle_inbound(last["id"])
    assert counts(desk) == before and desk.raws()[-1] == raw
    assert len(desk.tickets()) == FLOOD
