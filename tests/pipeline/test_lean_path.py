"""The per-email path stays lean: a new ticket with its acknowledgement and staff
notification costs a bounded number of SQL statements and ORM flushes, and the drafts
the run wrote are rendered as written (not read back) with the same result."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from postdesk.storage.models import Message, Outbox, OutboxStatus
from postdesk.workflow.desk.outbox import OutboxWriter, render_drafts
from postdesk.workflow.desk.services import Services
from postdesk.workflow.pipeline.process import process_inbound
from tests.pipeline.conftest import InboundBuilder
from tests.support import make_email

# Measured when the path was made lean (issue 11), leaving out transaction control
# (BEGIN, SAVEPOINT...): 26 statements (46 before) and 2 ORM flushes (11 before): the
# clocks with the ticket's assignment, and the raw message's outcome (ticket, message
# and drafts are each written by one INSERT). Then 19: the email's events in one INSERT,
# a ticket the email opened has its clocks, messages and notifications in hand (no
# query reads them back), and a draft is queued by one INSERT ... ON CONFLICT DO NOTHING
# instead of a look-up and an insert: 17. Then 1 flush: the raw message's outcome is one
# Core UPDATE whose values the in-memory row takes as committed. Then 16: a new ticket's
# priority and assignee are written with it (no UPDATE after the INSERT). A little room;
# an N+1 query or a flush per row would blow it.
MAX_STATEMENTS = 18
MAX_FLUSHES = 2
CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@pytest.fixture
def recorder(session: Session) -> Iterator[dict[str, list[Any]]]:
    seen: dict[str, list[Any]] = {"sql": [], "flush": []}
    connection = session.connection()

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen["sql"].append(sql)

    def flush(flushed: Session, context: Any) -> None:
        seen["flush"].append(flushed)

    event.listen(connection, "before_cursor_execute", statement)
    event.listen(Session, "after_flush", flush)
    yield seen
    event.remove(connection, "before_cursor_execute", statement)
    event.remove(Session, "after_flush", flush)


def test_a_new_ticket_costs_a_bounded_number_of_statements_and_flushes(
        inbound: InboundBuilder, session: Session, services: Services,
        recorder: dict[str, list[Any]]) -> None:
    warm = inbound(make_email(sender="warm@client.example"))
    session.commit()
    process_inbound(services, warm.raw.id)                 # directory rows now cached
    ctx = inbound(make_email(sender="erin@client.example", subject="Checkout broken"))
    session.commit()
    recorder["sql"].clear()
    recorder["flush"].clear()

    result = process_inbound(services, ctx.raw.id)

    assert result is not None and result.created_ticket and len(result.outbox_ids) == 2
    statements = [s for s in recorder["sql"] if s.split(None, 1)[0].upper() not in CONTROL]
    assert len(statements) <= MAX_STATEMENTS, "\n".join(statements)
    assert len(recorder["flush"]) <= MAX_FLUSHES
    assert "orgs" not in " ".join(recorder["sql"]) and "FROM staff" not in " ".join(
        recorder["sql"])
    # The clocks it started, its one message and its first notification are in hand.
    reads = [s for s in statements if s.startswith("SELECT")]
    assert not [s for s in reads if "FROM sla_clocks" in s], reads
    assert not [s for s in reads if "FROM messages" in s and "dedupe_key" not in s], reads
    assert sum(s.startswith("INSERT INTO events") for s in statements) == 1


def _readable(raw: bytes) -> tuple[Any, ...]:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    headers = tuple((k, str(v)) for k, v in msg.items()
                    if k not in ("Message-ID", "Content-Type"))
    return headers, msg.get_content_type(), [
        str(p.get_content()) for p in msg.walk() if p.get_content_maintype() == "text"]


def test_drafts_rendered_as_written_match_drafts_read_back(
        session: Session, services: Services, new_ticket: Any) -> None:
    ticket = new_ticket()
    writer = OutboxWriter(session, services)
    for key in ("ack:a", "ack:b"):
        writer.queue(dedupe_key=key, template="acknowledgement", to=["alice@client.example"],
                     subject=f"[PD-{ticket.id}] {ticket.subject}", ticket=ticket,
                     in_reply_to="<q1@client.example>", references=["<q0@client.example>"],
                     context={"ref": f"PD-{ticket.id}", "requester_name": "Alice",
                              "first_response_due": "Tue 24 Nov 2026 15:00 GMT"})
    session.commit()
    (a, _), (b, _) = writer.written

    assert render_drafts(services, [a.id]) == [a.id]                          # read back
    assert render_drafts(services, [b.id], written=writer.written) == [b.id]  # as written

    session.expire_all()
    stored = [session.get_one(Outbox, i) for i in (a.id, b.id)]
    assert [r.status for r in stored] == [OutboxStatus.QUEUED] * 2
    assert all(r.raw is not None and r.draft is None for r in stored)
    assert _readable(stored[0].raw or b"") == _readable(stored[1].raw or b"")
    messages = session.scalars(select(Message).where(
        Message.outbox_id.in_([a.id, b.id])).order_by(Message.id)).all()
    assert [(m.ticket_id, m.direction, m.kind, m.text) for m in messages] == [
        (ticket.id, "out", "system", messages[0].text)] * 2


def test_a_draft_already_stored_by_another_renderer_is_not_stored_again(
        session: Session, services: Services, new_ticket: Any) -> None:
    ticket = new_ticket()
    writer = OutboxWriter(session, services)
    row = writer.queue(dedupe_key="ack:race", template="acknowledgement",
                       to=["alice@client.example"], subject="s", ticket=ticket,
                       context={"ref": "PD-1", "requester_name": "", "first_response_due": None})
    assert row is not None
    session.commit()
    assert render_drafts(services, [row.id]) == [row.id]       # the sweeper got there first
    with services.sessions() as other:
        first = other.get_one(Outbox, row.id).raw
    assert first is not None

    # The worker's copy still says "draft": its conditional UPDATE finds nothing to do,
    # and the email is handed on once, by the renderer that stored it.
    assert row.status == OutboxStatus.DRAFT and row.raw is None
    assert render_drafts(services, [row.id], written=writer.written) == []
    with services.sessions() as other:
        assert other.get_one(Outbox, row.id).raw == first
        assert other.scalar(select(func.count(Message.id)).where(
            Message.outbox_id == row.id)) == 1
