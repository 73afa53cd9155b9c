"""The outbox in two steps: ``OutboxWriter.queue`` decides an email and stores it as a
draft; ``render_drafts`` renders and composes it, after commit, into the bytes we send."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from postdesk.mail.tokens import MessageIdToken, read_message_id, ticket_from_message_id
from postdesk.storage.models import Message, Outbox, OutboxStatus, Ticket
from postdesk.workflow.desk.outbox import (
    Draft,
    OutboxWriter,
    decode_context,
    encode_context,
    render_drafts,
    stale_draft_ids,
)
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.clock import ManualClock
from tests.desk.conftest import SECRET


def as_stored(session: Session, draft: Draft) -> Outbox:
    """The draft's outbox row as the database has it now (rendered, failed...)."""
    row = session.get(Outbox, draft.id, populate_existing=True)
    assert row is not None
    return row

def queue_ack(outbox: OutboxWriter, ticket: Ticket, key: str = "ack:1", *,
              to: str = "alice@client.example", **kw: Any) -> Outbox | None:
    """An acknowledgement to ``to``, with everything its template needs."""
    args: dict[str, Any] = dict(
        dedupe_key=key, template="acknowledgement", to=[to],
        subject=f"[PD-{ticket.id}] {ticket.subject}", ticket=ticket,
        context={"ref": f"PD-{ticket.id}", "requester_name": "Alice",
                 "first_response_due": None})
    args.update(kw)
    return outbox.queue(**args)


def outbox_rows(session: Session) -> list[Outbox]:
    return list(session.scalars(select(Outbox).order_by(Outbox.id)))


# --- queue -----------------------------------------------------------------------------

def test_a_key_queued_before_writes_nothing_and_returns_none_in_one_statement(
        session: Session, outbox: OutboxWriter, services: Services, clock: ManualClock,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    first = queue_ack(outbox, ticket, "ack:same")
    other_writer = OutboxWriter(session, services, clock.now())   # another run, same key
    inserts: list[str] = []
    listen = session.connection()
    event.listen(listen, "before_cursor_execute",
                 lambda _c, _cur, sql, *_a: inserts.append(sql) if "outbox" in sql else None)
    again = queue_ack(other_writer, ticket, "ack:same", subject="a different subject")
    assert first is not None and again is None
    assert [r.subject for r in outbox_rows(session)] == [first.subject]
    assert other_writer.queued_ids == []
    writes = [sql for sql in inserts if sql.startswith("INSERT")]
    assert len(writes) == 1 and "ON CONFLICT" in writes[0]


def test_queue_writes_a_draft_with_a_signed_message_id_naming_the_ticket(
        session: Session, outbox: OutboxWriter, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    row = queue_ack(outbox, ticket)
    assert row is not None
    assert row.status == OutboxStatus.DRAFT and row.raw is None
    assert row.recipient == "alice@client.example"
    assert ticket_from_message_id(SECRET, row.message_id) == ticket.id
    assert outbox.queued_ids == [row.id]


@pytest.mark.parametrize("to, cc, purpose", [
    ("dev1@agency.example", [], "staff"),
    ("DEV1@agency.example", ["dev2@agency.example"], "staff"),
    ("alice@client.example", [], "client"),
    ("dev1@agency.example", ["alice@client.example"], "client"),
    ("alice@client.example", ["dev1@agency.example"], "client"),
], ids=["staff", "staff and staff cc", "client", "staff with a client cc",
        "client with a staff cc"])
def test_only_email_every_recipient_of_which_is_staff_gets_a_staff_message_id(
        session: Session, outbox: OutboxWriter, new_ticket: Callable[..., Ticket],
        to: str, cc: list[str], purpose: str) -> None:
    """Answering a staff-purpose id (``pds-``) is a staff token; anything a client
    receives gets a client-purpose id (``pd-``), which only threads."""
    ticket = new_ticket()
    row = queue_ack(outbox, ticket, to=to, cc=cc)
    assert row is not None
    token = read_message_id(SECRET, row.message_id)
    assert token == MessageIdToken(ticket.id, purpose)  # type: ignore[arg-type]
    prefix = "<pds-" if purpose == "staff" else "<pd-"
    assert row.message_id.startswith(f"{prefix}{ticket.id}-")


def test_a_staff_message_id_is_kept_in_the_rendered_email(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    row = queue_ack(outbox, ticket, to="dev1@agency.example", on_ticket=False)
    assert row is not None
    render_drafts(services, [row.id])
    row = as_stored(session, row)
    assert row.raw is not None
    sent_id = message_from_bytes(row.raw, policy=policy.default)["Message-ID"]
    assert sent_id == row.message_id
    assert read_message_id(SECRET, sent_id) == MessageIdToken(ticket.id, "staff")


def test_queue_writes_a_draft_once_per_dedupe_key(
        session: Session, outbox: OutboxWriter, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    first = queue_ack(outbox, ticket, "ack:once")
    second = queue_ack(outbox, ticket, "ack:once", subject="a different subject")
    assert first is not None
    assert second is None
    assert [r.id for r in outbox_rows(session)] == [first.id]
    assert outbox.queued_ids == [first.id]


def test_the_dedupe_key_holds_across_writers_and_transactions(
        session: Session, services: Services, clock: ManualClock,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    assert queue_ack(OutboxWriter(session, services), ticket, "ack:x") is not None
    session.commit()
    clock.advance(timedelta(days=3))
    assert queue_ack(OutboxWriter(session, services), ticket, "ack:x") is None


def test_template_data_that_cannot_be_stored_is_refused_before_anything_is_written(
        session: Session, outbox: OutboxWriter, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    with pytest.raises(TypeError, match="Ticket"):
        queue_ack(outbox, ticket, context={"ref": "PD-1", "ticket_row": ticket})
    assert outbox_rows(session) == []
    assert outbox.queued_ids == []


# --- render_drafts ---------------------------------------------------------------------

def test_render_drafts_turns_a_draft_into_queued_bytes_with_its_headers(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    row = queue_ack(outbox, ticket, in_reply_to="<q1@client.example>",
                    references=["<q0@client.example>"])
    assert row is not None

    assert render_drafts(services, [row.id]) == [row.id]

    row = as_stored(session, row)
    assert row.status == OutboxStatus.QUEUED
    assert row.draft is None
    assert row.raw is not None
    msg = message_from_bytes(row.raw, policy=policy.default)
    assert msg["Subject"] == f"[PD-{ticket.id}] Website contact form broken"
    assert msg["To"] == "alice@client.example"
    assert msg["Message-ID"] == row.message_id
    assert msg["In-Reply-To"] == "<q1@client.example>"
    assert msg["References"].split() == ["<q0@client.example>", "<q1@client.example>"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert f"logged as PD-{ticket.id}" in msg.get_body(("plain",)).get_content()


def test_render_drafts_records_client_mail_among_the_tickets_messages(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    row = queue_ack(outbox, ticket, in_reply_to="<q1@client.example>")
    assert row is not None
    render_drafts(services, [row.id])

    message = session.scalar(select(Message).where(Message.outbox_id == row.id))
    assert message is not None
    assert message.ticket_id == ticket.id
    assert message.direction == "out" and message.kind == "system"
    assert message.message_id == row.message_id
    assert message.in_reply_to == "<q1@client.example>"
    assert f"logged as PD-{ticket.id}" in message.text


def test_mail_kept_off_the_ticket_is_rendered_but_not_recorded_as_a_message(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    row = queue_ack(outbox, ticket, to="dev1@agency.example", on_ticket=False)
    assert row is not None
    assert render_drafts(services, [row.id]) == [row.id]
    assert session.scalar(select(func.count(Message.id)).where(
        Message.ticket_id == ticket.id)) == 0


def test_rendering_a_draft_twice_records_one_message_and_still_hands_it_on(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    row = queue_ack(outbox, ticket)
    assert row is not None
    assert render_drafts(services, [row.id]) == [row.id]
    assert render_drafts(services, [row.id]) == [row.id]   # a racing renderer: still sent
    assert session.scalar(select(func.count(Message.id)).where(
        Message.outbox_id == row.id)) == 1


def test_several_drafts_are_stored_with_one_update_statement(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    rows = [queue_ack(outbox, ticket, key=f"ack:{n}") for n in range(3)]
    ids = [row.id for row in rows if row is not None]
    updates: list[bool] = []    # executemany, per UPDATE of the outbox

    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE OUTBOX"):
            updates.append(executemany)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert render_drafts(services, ids, written=outbox.written) == ids
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert updates == [True]
    assert session.scalar(select(func.count(Message.id)).where(
        Message.outbox_id.in_(ids))) == 3


def test_drafts_another_renderer_stored_first_are_left_to_it_and_the_rest_stored(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    """Stored together, one statement changes fewer rows than it was given: that is
    rolled back, and the drafts are stored one by one, which tells whose each one is."""
    ticket = new_ticket()
    first, second = (queue_ack(outbox, ticket, key=f"ack:{n}") for n in range(2))
    assert first is not None and second is not None
    # Another renderer (the sweeper, say) reads and stores the first draft now.
    assert render_drafts(services, [first.id]) == [first.id]
    # This one renders both as it wrote them, and hands on only the one it stored.
    assert render_drafts(services, [first.id, second.id], written=outbox.written) == [
        second.id]
    recorded = session.execute(select(Message.outbox_id, func.count(Message.id))
                               .group_by(Message.outbox_id)).all()
    assert sorted(recorded) == sorted([(first.id, 1), (second.id, 1)])
    statuses = session.execute(select(Outbox.status).where(
        Outbox.id.in_([first.id, second.id])).execution_options(populate_existing=True))
    assert [status for (status,) in statuses] == [OutboxStatus.QUEUED] * 2


def test_an_automatic_email_over_the_hourly_limit_is_suppressed(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    limit = services.config.desk.auto_reply_limit_per_hour
    ticket = new_ticket()
    rows = [queue_ack(outbox, ticket, f"auto:{i}") for i in range(limit + 1)]
    ids = [r.id for r in rows if r is not None]
    assert len(ids) == limit + 1
    # Suppressed from the start: kept, not yet rendered.
    assert [(r.status, r.raw) for r in rows if r is not None] == (
        [(OutboxStatus.DRAFT, None)] * limit + [(OutboxStatus.SUPPRESSED, None)])

    ready = render_drafts(services, ids)

    session.expire_all()
    after = [session.get_one(Outbox, i) for i in ids]
    assert [r.status for r in after] == [OutboxStatus.QUEUED] * limit + [OutboxStatus.SUPPRESSED]
    assert all(r.raw is not None and r.draft is None for r in after)  # rendered, all of them
    assert ready == ids[:limit]          # a suppressed email is never handed to the sender


def test_a_rendered_suppressed_email_stays_suppressed_and_is_never_handed_on(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    limit = services.config.desk.auto_reply_limit_per_hour
    ticket = new_ticket()
    for i in range(limit):
        queue_ack(outbox, ticket, f"auto:{i}")
    over = queue_ack(outbox, ticket, "auto:over")
    assert over is not None and over.status == OutboxStatus.SUPPRESSED

    assert render_drafts(services, [over.id]) == []
    over = as_stored(session, over)
    assert over.status == OutboxStatus.SUPPRESSED and over.raw is not None
    raw = over.raw
    assert message_from_bytes(raw, policy=policy.default)["Message-ID"] == over.message_id

    assert render_drafts(services, [over.id]) == []          # again: nothing changes
    over = as_stored(session, over)
    assert (over.status, over.raw) == (OutboxStatus.SUPPRESSED, raw)


def test_stale_drafts_include_unrendered_suppressed_ones_only(
        session: Session, services: Services, outbox: OutboxWriter, clock: ManualClock,
        new_ticket: Callable[..., Ticket]) -> None:
    limit = services.config.desk.auto_reply_limit_per_hour
    ticket = new_ticket()
    drafts = [queue_ack(outbox, ticket, f"auto:{i}") for i in range(limit + 2)]
    ids = [r.id for r in drafts if r is not None]
    later = clock.now() + timedelta(minutes=5)
    assert stale_draft_ids(session, later) == ids           # drafts and suppressed alike
    render_drafts(services, [ids[0], ids[-1]])              # one of each, rendered
    assert stale_draft_ids(session, later) == ids[1:-1]
    assert stale_draft_ids(session, clock.now()) == []       # none older than now


def test_the_automatic_limit_spares_staff_and_mail_a_person_wrote(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    limit = services.config.desk.auto_reply_limit_per_hour
    ticket = new_ticket()
    for i in range(limit):
        queue_ack(outbox, ticket, f"auto:{i}")
    relay = queue_ack(outbox, ticket, "relay:1", automatic=False)
    staff_alert = [queue_ack(outbox, ticket, f"alert:{i}", to="dev1@agency.example")
                   for i in range(limit + 1)]
    assert relay is not None and relay.draft is not None
    assert relay.draft["suppress"] is False and relay.status == OutboxStatus.DRAFT
    assert all(r is not None and r.draft is not None and r.draft["suppress"] is False
               and r.status == OutboxStatus.DRAFT for r in staff_alert)


def test_the_automatic_limit_counts_only_the_last_hour(
        session: Session, services: Services, clock: ManualClock,
        new_ticket: Callable[..., Ticket]) -> None:
    limit = services.config.desk.auto_reply_limit_per_hour
    ticket = new_ticket()
    writer = OutboxWriter(session, services)
    for i in range(limit):
        queue_ack(writer, ticket, f"auto:{i}")
    clock.advance(timedelta(minutes=61))
    later = queue_ack(writer, ticket, "auto:later")
    assert later is not None and later.draft is not None
    assert later.draft["suppress"] is False and later.status == OutboxStatus.DRAFT


def test_a_draft_that_will_be_suppressed_does_not_count_towards_the_limit(
        session: Session, services: Services, clock: ManualClock,
        new_ticket: Callable[..., Ticket]) -> None:
    limit = services.config.desk.auto_reply_limit_per_hour
    ticket = new_ticket()
    writer = OutboxWriter(session, services)
    for i in range(limit):
        queue_ack(writer, ticket, f"auto:{i}")
    clock.advance(timedelta(minutes=30))
    over = queue_ack(writer, ticket, "auto:over")        # suppressed, not yet rendered
    assert over is not None and over.draft is not None and over.draft["suppress"] is True
    assert (over.status, over.raw) == (OutboxStatus.SUPPRESSED, None)
    clock.advance(timedelta(minutes=31))                  # the first ones leave the hour
    fresh = [queue_ack(writer, ticket, f"auto:fresh{i}") for i in range(limit)]
    assert all(r is not None and r.draft is not None and r.draft["suppress"] is False
               and r.status == OutboxStatus.DRAFT for r in fresh)


def test_a_template_that_fails_marks_the_draft_failed_with_the_reason(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    row = queue_ack(outbox, ticket, context={"requester_name": "Alice"})   # no "ref"
    assert row is not None

    assert render_drafts(services, [row.id]) == []

    row = as_stored(session, row)
    assert row.status == OutboxStatus.FAILED
    assert row.raw is None
    assert row.last_error is not None
    assert row.last_error.startswith("render:") and "'ref' is undefined" in row.last_error
    assert session.scalar(select(func.count(Message.id)).where(
        Message.outbox_id == row.id)) == 0


def test_a_failed_draft_does_not_stop_the_others(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    broken = queue_ack(outbox, ticket, "ack:broken", template="no_such_template")
    good = queue_ack(outbox, ticket, "ack:good")
    assert broken is not None and good is not None
    assert render_drafts(services, [broken.id, good.id]) == [good.id]
    session.expire_all()
    assert session.get(Outbox, broken.id).status == OutboxStatus.FAILED  # type: ignore[union-attr]
    assert "no_such_template" in (session.get(Outbox, broken.id).last_error or "")  # type: ignore[union-attr]


# --- template data kept as JSON --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Usage:
    ref: str
    used: timedelta
    day: date


def json_round_trip(value: Any) -> Any:
    return decode_context(json.loads(json.dumps(encode_context(value))))


@pytest.mark.parametrize("value", [
    timedelta(hours=2, minutes=15),
    timedelta(seconds=-90),
    datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    datetime(2026, 7, 1, 9, 30, tzinfo=ZoneInfo("Europe/London")),
    date(2026, 2, 28),
    {"due": {"first_response": datetime(2026, 11, 24, 15, 0, tzinfo=UTC)}},
    [[1, "two", None], [timedelta(minutes=5), [date(2026, 1, 1), True]]],
    "plain text", 42, 1.5, None, False,
], ids=repr)
def test_encode_and_decode_context_round_trip_through_json(value: Any) -> None:
    assert json_round_trip(value) == value


def test_a_dataclass_comes_back_as_an_object_with_the_same_decoded_fields() -> None:
    usage = Usage("PD-1", timedelta(minutes=45), date(2026, 2, 1))
    back = json_round_trip({"usage": [usage]})["usage"][0]
    assert isinstance(back, SimpleNamespace)
    assert vars(back) == dataclasses.asdict(usage)


def test_a_tuple_comes_back_as_a_list() -> None:
    assert json_round_trip(("PD-1", "subject", timedelta(hours=1))) == [
        "PD-1", "subject", timedelta(hours=1)]


def test_an_orm_object_in_template_data_raises_type_error(
        new_ticket: Callable[..., Ticket]) -> None:
    with pytest.raises(TypeError, match="cannot be stored in a draft"):
        encode_context({"rows": [new_ticket()]})
