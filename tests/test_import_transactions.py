"""``postdesk import`` records a batch of emails in ONE database transaction, each email in
a savepoint of its own: the outcomes are those of one email per transaction, an email that
fails is quarantined alone while the rest of its batch lands, and the email a batch wrote
is handed to the sender only after the batch has committed (never for an email that was
rolled back). The kill -9 of a real import mid-batch is in ``test_import_kill``."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select

from postdesk.importer import Importer, ImportSummary
from postdesk.ingest.accept import Envelope
from postdesk.storage.blobs import sha256_hex
from postdesk.storage.db import NEEDS_NO_BUFFERED_ROWS
from postdesk.storage.models import Event, Message, Outbox, RawMessage, Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.outbox import RENDER_BATCH
from postdesk.workflow.pipeline.batch import process_batch
from postdesk.workflow.pipeline.builtin import BUILTIN, Pipeline
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.notify import answer_balance
from postdesk.workflow.pipeline.runner import Outcome, Step
from postdesk.workflow.rules.config import parse_config
from tests.conftest import Desk, start_desk, stop_desk
from tests.mailgen import history, write_mbox
from tests.support import backend, backend_param, config_text, make_email, this_weeks_monday

BACKENDS = [backend_param("sqlite"), backend_param("postgres-redis")]
FLOOD_LIMIT = 2     # new tickets per sender per hour, so that a flood is in the mix


@contextmanager
def fresh_desk(kind: str, tmp_path: Path, desk_extra: str = "") -> Iterator[Desk]:
    """A desk with a database of its own (no workers: the test sees what was handed on)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    with backend(kind, tmp_path) as be:
        text = config_text(be, tmp_path / "data", rota_start=this_weeks_monday(),
                           desk_extra=f"flood_tickets_per_hour = {FLOOD_LIMIT}\n{desk_extra}")
        desk = start_desk(parse_config(text, environ={}), smtp=False, workers=False)
        try:
            yield desk
        finally:
            stop_desk(desk)


class HandedOn:
    """A Dispatch that records the outbox ids handed to the sender, and what the database
    said about each one at that moment, from a connection of its own (so only what was
    committed)."""

    def __init__(self, database_url: str):
        self.engine = create_engine(database_url)
        self.outbox_ids: list[int] = []
        self.committed_as: dict[int, str | None] = {}

    def inbound(self, raw_id: int) -> None:
        raise AssertionError("an import processes its mail itself")

    def outbox(self, *outbox_ids: int) -> None:
        for outbox_id in outbox_ids:
            self.outbox_ids.append(outbox_id)
            with self.engine.connect() as conn:
                self.committed_as[outbox_id] = conn.execute(
                    select(Outbox.status).where(Outbox.id == outbox_id)).scalar()


def run_import(desk: Desk, path: Path, dispatch: Any = None, **kw: Any) -> ImportSummary:
    importer = Importer(desk.app.services, dispatch or desk.app.dispatch, "mbox",
                        warn=print, **kw)
    return importer.run(importer.sources([str(path)]))


def stored(desk: Desk) -> dict[str, Any]:
    """Everything an import writes, in a form two desks can be compared by: tickets named
    by their subjects (PostgreSQL's sequences do not give back the numbers a rolled-back
    transaction took), rows in the order they were made where that order is the mail's,
    outgoing messages (recorded when drafts are rendered, after commit) as a multiset."""
    with desk.app.sessions() as s:
        subject = {t.id: t.subject for t in s.scalars(select(Ticket))}
        subject[None] = None  # type: ignore[index]
        return {
            "tickets": [(t.subject, t.requester_email, t.status, t.priority, t.assignee_id)
                        for t in s.scalars(select(Ticket).order_by(Ticket.id))],
            "raws": [(r.status, r.reason, subject[r.ticket_id], r.subject) for r in
                     s.scalars(select(RawMessage).order_by(RawMessage.id))],
            "inbound": [(subject[m.ticket_id], m.subject, m.stripped_text) for m in s.scalars(
                select(Message).where(Message.direction == "in").order_by(Message.id))],
            "outbound": sorted((subject[m.ticket_id], _ref(m.subject), m.kind) for m in s.scalars(
                select(Message).where(Message.direction == "out"))),
            "events": sorted(Counter((subject[e.ticket_id], e.kind) for e in s.scalars(
                select(Event))).items(), key=repr),
            "outbox": [(o.template, o.recipient, subject[o.ticket_id], o.status,
                        _ref(o.subject))
                       for o in s.scalars(select(Outbox).order_by(Outbox.id))],
        }


def _ref(subject: str | None) -> str | None:
    """A subject with its ticket number left out (see ``stored``)."""
    return re.sub(r"\[PD-\d+\]", "[PD-n]", subject) if subject else subject


def mixed_mbox(tmp_path: Path, tag: str) -> tuple[Path, dict[str, Any]]:
    """New tickets and replies to them (some in the same batch), strangers, a byte-for-byte
    copy in the same batch and one far from the first, a re-send with the same Message-ID,
    garbage, a staff member writing without authority, and one sender opening more tickets
    in an hour than the flood limit allows, followed by more new tickets."""
    h = history(60, tag=tag)
    messages: list[EmailMessage | bytes] = list(h.messages)
    resent = h.messages[8].as_bytes().replace(b"\nTo: ", b"\nX-Resent: yes\nTo: ", 1)
    flood = [make_email(sender="flood@client.example", subject=f"Flood {i} ({tag})")
             for i in range(FLOOD_LIMIT + 2)]
    after = [make_email(sender=f"after{i}@client.example", subject=f"After the flood {i}")
             for i in range(3)]
    staff = make_email(sender="dev1@agency.example", subject="Note to self, no envelope")
    messages[4:4] = [h.messages[3]]                  # a copy right after its first
    messages[20:20] = [b"\x00\xff\xfe not an email \x00\n", staff, resent]
    messages[30:30] = [*flood, *after]
    messages.append(h.messages[0])                   # a copy far from its first
    expected = {"tickets": h.tickets + FLOOD_LIMIT + len(after), "replies": h.replies,
                "duplicates": 3, "flood": 2, "unknown_sender": h.unknown}
    return write_mbox(tmp_path / f"{tag}.mbox", messages), expected  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_batched_import_stores_and_counts_exactly_what_one_email_per_transaction_does(
        kind: str, tmp_path: Path) -> None:
    mbox, expected = mixed_mbox(tmp_path, "same")
    results = {}
    for batch in (1, 25):
        with fresh_desk(kind, tmp_path / f"batch{batch}") as desk:
            summary = run_import(desk, mbox, per_transaction=batch, notify=True)
            results[batch] = (summary.as_json(), stored(desk))
    one_by_one, batched = results[1], results[25]
    assert batched[0] == one_by_one[0]
    assert batched[0]["tickets_created"] == expected["tickets"]
    assert batched[0]["replies_threaded"] == expected["replies"]
    assert batched[0]["duplicates"] == expected["duplicates"]
    assert batched[0]["quarantined"]["flood"] == expected["flood"]
    assert batched[0]["quarantined"]["unknown_sender"] == expected["unknown_sender"]
    assert batched[0]["quarantined"]["unparseable"] == 1
    for part in one_by_one[1]:
        assert batched[1][part] == one_by_one[1][part], part


def test_a_batch_renders_each_email_with_its_ticket_as_it_was_when_the_email_was_queued(
        tmp_path: Path) -> None:
    """A reply later in the same batch escalates the ticket to P1; the acknowledgement of
    the email that opened it still says the priority it had then, as when each email has
    its own transaction (and as the client would have read it)."""
    opening = make_email(sender="client1@client.example", subject="Checkout slow")
    escalating = make_email(sender="client1@client.example", subject="Re: Checkout slow",
                            in_reply_to=opening["Message-ID"],
                            body="Now nobody can pay. CLIENTCO-URGENT")
    mbox = write_mbox(tmp_path / "escalated.mbox", [opening, escalating])
    seen = {}
    for batch in (1, 10):
        with fresh_desk("sqlite", tmp_path / f"batch{batch}") as desk:
            run_import(desk, mbox, per_transaction=batch, notify=True)
            with desk.app.sessions() as s:
                ticket = s.scalars(select(Ticket)).one()
                ack = s.scalars(select(Outbox).where(
                    Outbox.template == "acknowledgement")).one()
                assert ack.raw is not None
                seen[batch] = (ticket.priority, re.findall(rb"Priority: P\d", ack.raw))
    assert seen[10] == seen[1] == ("P1", [b"Priority: P3"])


@contextmanager
def statements_run(desk: Desk) -> Iterator[list[str]]:
    """The SQL the desk's engine runs inside the block: the first three words of each,
    upper-cased ("INSERT INTO EVENTS", "SAVEPOINT SA_SAVEPOINT_1")."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()[:3]).upper())

    event.listen(desk.app.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(desk.app.engine, "before_cursor_execute", record)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_clean_batch_is_recorded_without_savepoints_and_one_to_undo_again_with_them(
        kind: str, tmp_path: Path) -> None:
    with fresh_desk(kind, tmp_path) as desk:
        clean = [make_email(sender=f"client{i}@client.example", subject=f"Question {i}")
                 for i in range(4)]
        with statements_run(desk) as seen:
            summary = run_import(desk, write_mbox(tmp_path / "clean.mbox", clean),
                                 per_transaction=4)
        assert summary.tickets_created == 4
        assert not [s for s in seen if s.startswith("SAVEPOINT")]
        # The events of the whole batch (each ticket's opening and more) in one statement,
        # and the outcomes of its raw messages in one more (an executemany).
        assert seen.count("INSERT INTO EVENTS") == 1
        assert seen.count("UPDATE RAW_MESSAGES SET") == 1
        # On SQLite the batch's new rows are held back and written one statement per table
        # (``rows.buffered_rows``); elsewhere each is written as it is made.
        per_table = 1 if kind == "sqlite" else 4
        assert [seen.count(f"INSERT INTO {t}") for t in ("TICKETS", "MESSAGES", "SLA_CLOCKS")
                ] == [per_table] * 3
        assert [(r["status"], r["subject"]) for r in desk.raws()] == [
            ("processed", f"Question {i}") for i in range(4)]

        flooding = [make_email(sender="flood@client.example", subject=f"Flood {i}")
                    for i in range(FLOOD_LIMIT + 1)]
        with statements_run(desk) as seen:
            summary = run_import(desk, write_mbox(tmp_path / "flood.mbox", flooding),
                                 per_transaction=len(flooding))
        assert summary.as_json()["quarantined"] == {"flood": 1}
        assert summary.tickets_created == FLOOD_LIMIT
        # Recorded again: one savepoint per email and one more around each record phase.
        assert len([s for s in seen if s.startswith("SAVEPOINT")]) == 2 * len(flooding)


def poisoned(subject: str) -> Pipeline:
    """The built-in pipeline, with a last notify step that fails for one email after
    everything else was recorded for it: its ticket, message, events and drafts."""
    def fail_after_recording(ctx: Inbound) -> None:
        if ctx.parsed is not None and ctx.parsed.subject == subject:
            assert ctx.ticket is not None and ctx.outbox.queued_ids
            raise RuntimeError(f"poisoned: {subject}")

    return dataclasses.replace(BUILTIN, notify=[*BUILTIN.notify,
                                                Step("poison", fail_after_recording)])


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_poison_email_mid_batch_is_quarantined_alone_and_the_rest_of_the_batch_lands(
        kind: str, tmp_path: Path) -> None:
    # Every raw email a file (none kept in its row), so that one can be lost.
    with fresh_desk(kind, tmp_path, desk_extra="raw_in_database_bytes = 0") as desk:
        emails = [make_email(sender=f"client{i}@client.example", subject=f"Question {i}")
                  for i in range(10)]
        emails[6] = make_email(sender="client6@client.example", subject="Poison")
        # Email 3 was accepted by an earlier run and its blob has been lost since (a
        # restore from an older backup): processing it fails before it records anything.
        lost = desk.app.accept(emails[3].as_bytes(), Envelope(), "import:mbox",
                               notify=True, enqueue=False)
        with desk.app.sessions() as s:
            digest = s.get(RawMessage, lost.raw_id).sha256
        desk.app.services.blobs.path_for(digest).unlink()
        mbox = write_mbox(tmp_path / "poison.mbox", emails)
        handed = HandedOn(desk.config.desk.database_url)

        summary = run_import(desk, mbox, handed, per_transaction=10, notify=True,
                             pipeline=poisoned("Poison"))

        assert summary.as_json() == {"total": 10, "tickets_created": 8, "replies_threaded": 0,
                                     "duplicates": 0, "quarantined": {"processing_error": 2},
                                     "failed": 0}
        with desk.app.sessions() as s:
            raws = {r.sha256: r for r in s.scalars(select(RawMessage))}
            tickets = list(s.scalars(select(Ticket.subject).order_by(Ticket.id)))
            inbound = list(s.scalars(select(Message.subject).where(Message.direction == "in")
                                     .order_by(Message.id)))
            acks = list(s.scalars(select(Outbox.recipient).where(
                Outbox.template == "acknowledgement").order_by(Outbox.id)))
            outbox = list(s.scalars(select(Outbox).order_by(Outbox.id)))
            events = Counter(s.scalars(select(Event.kind)))
        handed.engine.dispose()
        # The two failures are quarantined with their reasons; nothing of theirs is kept.
        poison, lost_raw = raws[sha256_hex(emails[6].as_bytes())], raws[digest]
        assert (poison.status, poison.reason) == ("quarantined", "processing_error")
        assert "RuntimeError: poisoned: Poison" in poison.detail
        assert (lost_raw.status, lost_raw.reason) == ("quarantined", "processing_error")
        assert "missing from the blob store" in lost_raw.detail
        survivors = [f"Question {i}" for i in range(10) if i not in (3, 6)]
        assert tickets == survivors and inbound == survivors
        assert acks == [f"client{i}@client.example" for i in range(10) if i not in (3, 6)]
        assert events["ticket_created"] == 8
        # Handed to the sender: exactly the survivors' emails, each once, each already
        # committed and rendered when it was handed on.
        assert sorted(handed.outbox_ids) == [o.id for o in outbox if o.status == "queued"]
        assert len(handed.outbox_ids) == len(set(handed.outbox_ids)) == len(outbox) == 16
        assert set(handed.committed_as.values()) == {"queued"}


@pytest.mark.parametrize("kind", BACKENDS)
def test_notify_sends_exactly_one_acknowledgement_per_new_ticket_after_each_batch_commits(
        kind: str, tmp_path: Path) -> None:
    with fresh_desk(kind, tmp_path) as desk:
        h = history(70, tag="acks")
        mbox = write_mbox(tmp_path / "acks.mbox", h.messages)
        handed = HandedOn(desk.config.desk.database_url)

        summary = run_import(desk, mbox, handed, per_transaction=25, notify=True)
        again = run_import(desk, mbox, handed, per_transaction=25, notify=True)

        assert summary.tickets_created == h.tickets and again.duplicates == 70
        with desk.app.sessions() as s:
            acks = Counter(s.scalars(select(Outbox.ticket_id).where(
                Outbox.template == "acknowledgement")))
            ticket_ids = set(s.scalars(select(Ticket.id)))
            outbox = {o.id: o.status for o in s.scalars(select(Outbox))}
        handed.engine.dispose()
        assert set(acks) == ticket_ids and set(acks.values()) == {1}
        assert len(ticket_ids) == h.tickets
        # Every email written was handed on once, after the commit that wrote it.
        assert sorted(handed.outbox_ids) == sorted(outbox)
        assert set(handed.committed_as.values()) == {"queued"} == set(outbox.values())


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_crash_mid_batch_leaves_the_batch_undone_and_a_rerun_does_it_once(
        kind: str, tmp_path: Path) -> None:
    with fresh_desk(kind, tmp_path) as desk:
        h = history(40, tag="crash")
        mbox = write_mbox(tmp_path / "crash.mbox", h.messages)
        seen = {"n": 0}

        def dies_at_the_fifteenth(ctx: Inbound) -> None:
            seen["n"] += 1
            if seen["n"] == 15:       # the 5th email of the 2nd transaction of 10
                raise Crash

        dying = dataclasses.replace(BUILTIN, notify=[*BUILTIN.notify,
                                                     Step("dies", dies_at_the_fifteenth)])
        with pytest.raises(Crash):
            run_import(desk, mbox, per_transaction=10, notify=True, pipeline=dying)
        first = stored(desk)
        # All forty accepted (one accept transaction); the first ten recorded whole; of
        # the rest, their rows and nothing else.
        first_batch = [m["Subject"] for m in h.messages[:10]
                       if m["Subject"].startswith("Problem number")]
        assert [t[0] for t in first["tickets"]] == first_batch
        assert Counter(r[0] for r in first["raws"]) == {"processed": 9, "quarantined": 1,
                                                        "pending": 30}
        assert {o[2] for o in first["outbox"]} <= {*first_batch, None}

        summary = run_import(desk, mbox, per_transaction=10, notify=True)
        assert summary.duplicates == 10 and summary.total == 40
        after = stored(desk)
    # Exactly what an import that never crashed stores, nothing twice.
    with fresh_desk(kind, tmp_path / "never-crashed") as clean:
        run_import(clean, mbox, per_transaction=10, notify=True)
        assert after == stored(clean)
    assert len(after["tickets"]) == h.tickets
    assert len(after["inbound"]) == h.tickets + h.replies
    assert Counter(o[0] for o in after["outbox"])["acknowledgement"] == h.tickets


def another_door_commits(message_id: str, engine: Any,
                         on_pass: Callable[[Inbound], bool] = lambda ctx: True) -> Step:
    """A check that, the first time it meets ``message_id`` (on a pass ``on_pass``
    accepts), commits the same email on a ticket through a connection of its own: what
    another door does while the batch records."""
    staged = {"done": False}

    def commit_it(ctx: Inbound) -> None:
        if staged["done"] or ctx.parsed is None or ctx.parsed.message_id != message_id:
            return
        if not on_pass(ctx):
            return
        staged["done"] = True
        with engine.begin() as conn:   # its own transaction, committed now
            ticket_id = conn.execute(select(Ticket.id).limit(1)).scalar_one()
            conn.execute(Message.__table__.insert().values(
                ticket_id=ticket_id, direction="in", kind="public",
                dedupe_key=f"in:{message_id}", message_id=message_id, subject="raced",
                created_at=ctx.now))

    return Step("another door", commit_it)


def test_a_unique_key_race_inside_a_batch_records_the_batch_again_and_the_email_is_a_duplicate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL (on SQLite the batch's write lock keeps every other writer out): while
    the batch records, another door commits the same email (its Message-ID) on a ticket.
    That email's insert meets the unique key; the batch's transaction is rolled back and
    the batch recorded again, each email in a savepoint, where the email finds itself
    already stored and is a duplicate; the rest of the batch lands once."""
    with fresh_desk("postgres-redis", tmp_path) as desk:
        first = make_email(sender="early@client.example", subject="Already here")
        run_import(desk, write_mbox(tmp_path / "first.mbox", [first]))
        emails = [make_email(sender=f"client{i}@client.example", subject=f"Question {i}")
                  for i in range(10)]
        raced = emails[4]["Message-ID"]
        engine = create_engine(desk.config.desk.database_url)
        racing = dataclasses.replace(BUILTIN, checks=[
            *BUILTIN.checks, another_door_commits(raced, engine)])
        with caplog.at_level(logging.INFO, logger="postdesk.inbound"):
            summary = run_import(desk, write_mbox(tmp_path / "race.mbox", emails),
                                 per_transaction=10, pipeline=racing)
        engine.dispose()

        again = [r.getMessage() for r in caplog.records
                 if "recording the batch again" in r.getMessage()]
        assert len(again) == 1 and "(IntegrityError)" in again[0]
        assert summary.as_json() == {"total": 10, "tickets_created": 9, "replies_threaded": 0,
                                     "duplicates": 1, "quarantined": {}, "failed": 0}
        with desk.app.sessions() as s:
            subjects = list(s.scalars(select(Ticket.subject).order_by(Ticket.id)))
            stored_once = list(s.scalars(select(Message.ticket_id)
                                         .where(Message.message_id == raced)))
        assert subjects == ["Already here", *(f"Question {i}" for i in range(10) if i != 4)]
        assert len(stored_once) == 1


def test_a_unique_key_race_in_a_batch_recorded_with_savepoints_reruns_that_email_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same race, met once the batch is being recorded with savepoints (a flood
    earlier in it sent it there): that email's savepoint is undone and it alone is run
    again on fresh data, where it is a duplicate."""
    with fresh_desk("postgres-redis", tmp_path) as desk:
        first = make_email(sender="early@client.example", subject="Already here")
        run_import(desk, write_mbox(tmp_path / "first.mbox", [first]))
        flooding = [make_email(sender="flood@client.example", subject=f"Flood {i}")
                    for i in range(FLOOD_LIMIT + 1)]
        emails = [*flooding, *(make_email(sender=f"client{i}@client.example",
                                          subject=f"Question {i}") for i in range(5))]
        raced = emails[-2]["Message-ID"]
        engine = create_engine(desk.config.desk.database_url)
        racing = dataclasses.replace(BUILTIN, checks=[*BUILTIN.checks, another_door_commits(
            raced, engine, on_pass=lambda ctx: ctx.session.in_nested_transaction())])
        with caplog.at_level(logging.INFO, logger="postdesk.inbound"):
            summary = run_import(desk, write_mbox(tmp_path / "race.mbox", emails),
                                 per_transaction=len(emails), pipeline=racing)
        engine.dispose()

        messages = [r.getMessage() for r in caplog.records]
        again = [m for m in messages if "recording the batch again" in m]
        assert len(again) == 1 and "quarantined as flood" in again[0]
        races = [m for m in messages if "unique-key race" in m]
        assert len(races) == 1 and "(attempt 1)" in races[0]
        assert summary.as_json() == {
            "total": len(emails), "tickets_created": FLOOD_LIMIT + 4, "replies_threaded": 0,
            "duplicates": 1, "quarantined": {"flood": 1}, "failed": 0}
        with desk.app.sessions() as s:
            stored_once = list(s.scalars(select(Message.ticket_id)
                                         .where(Message.message_id == raced)))
        assert len(stored_once) == 1


@pytest.mark.parametrize("kind", BACKENDS)
def test_an_event_that_cannot_be_written_quarantines_its_email_alone(
        kind: str, tmp_path: Path) -> None:
    """Without savepoints a batch writes its emails' events in one statement before it
    commits; when that fails, the batch is recorded again with savepoints, where the
    email whose event it was is quarantined alone."""
    def unstorable_event(ctx: Inbound) -> None:
        if ctx.parsed is not None and ctx.parsed.subject == "Question 2":
            add_event(ctx.session, ctx.ticket, "poison", ctx.now, unstorable=object())

    poisoning = dataclasses.replace(BUILTIN, notify=[*BUILTIN.notify,
                                                     Step("poison", unstorable_event)])
    with fresh_desk(kind, tmp_path) as desk:
        emails = [make_email(sender=f"client{i}@client.example", subject=f"Question {i}")
                  for i in range(5)]
        summary = run_import(desk, write_mbox(tmp_path / "poison.mbox", emails),
                             per_transaction=5, pipeline=poisoning)
        assert summary.as_json()["quarantined"] == {"processing_error": 1}
        assert summary.tickets_created == 4
        with desk.app.sessions() as s:
            subjects = sorted(s.scalars(select(Ticket.subject)))
            kinds = set(s.scalars(select(Event.kind)))
        assert subjects == [f"Question {i}" for i in (0, 1, 3, 4)]
        assert "poison" not in kinds and "ticket_created" in kinds


def failing_after_the_outcome() -> Pipeline:
    """The built-in pipeline, where the reaction to a ``balance`` request leaves a row
    that cannot be written: the email's savepoint fails at its flush, after the raw
    message's outcome was written (``process._finish``)."""
    def answer_then_fail(ctx: Inbound, outcome: Outcome) -> None:
        answer_balance(ctx, outcome)
        ctx.session.add(Event(ticket_id=None, at=ctx.now, kind="poison", actor="test",
                              data={"unstorable": object()}))

    return dataclasses.replace(BUILTIN, reactions={
        **BUILTIN.reactions, ("processed", "balance_request"): answer_then_fail})


@pytest.mark.parametrize("kind", BACKENDS)
def test_an_email_failing_after_its_outcome_was_written_is_quarantined_alone(
        kind: str, tmp_path: Path) -> None:
    """Its savepoint is rolled back, outcome and all; the quarantine is written on the
    raw message as it is in the database (still pending), not as it was in memory."""
    with fresh_desk(kind, tmp_path) as desk:
        emails = [make_email(sender=f"client{i}@client.example", subject=f"Question {i}")
                  for i in range(5)]
        emails[2] = make_email(sender="client2@client.example", subject="balance")
        summary = run_import(desk, write_mbox(tmp_path / "late.mbox", emails),
                             per_transaction=5, pipeline=failing_after_the_outcome())

        assert summary.as_json()["quarantined"] == {"processing_error": 1}
        assert summary.as_json()["tickets_created"] == 4
        with desk.app.sessions() as s:
            raws = {r.sha256: (r.status, r.reason, r.attempts)
                    for r in s.scalars(select(RawMessage))}
            poison_events = s.scalars(select(Event).where(Event.kind == "poison")).all()
        failed = sha256_hex(emails[2].as_bytes())
        assert raws.pop(failed) == ("quarantined", "processing_error", 1)
        assert list(raws.values()) == [("processed", None, 1)] * 4
        assert poison_events == []


def test_a_connection_lost_mid_batch_rolls_the_batch_back_and_the_import_retries_it(
        tmp_path: Path) -> None:
    """PostgreSQL: the import's connection is terminated by the server in the middle of a
    batch (an administrator, a failover). The batch is rolled back whole and run again on
    a new connection: every email once."""
    with fresh_desk("postgres-redis", tmp_path) as desk:
        h = history(30, tag="lost")
        engine = create_engine(desk.config.desk.database_url)
        cut = {"done": False}

        def the_server_cuts_the_connection(ctx: Inbound) -> None:
            if cut["done"] or ctx.parsed is None or ctx.parsed.message_id != \
                    h.messages[13]["Message-ID"]:
                return
            cut["done"] = True
            pid = ctx.session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with engine.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")

        cutting = dataclasses.replace(BUILTIN, checks=[*BUILTIN.checks, Step(
            "cut", the_server_cuts_the_connection)])
        summary = run_import(desk, write_mbox(tmp_path / "lost.mbox", h.messages),
                             per_transaction=10, notify=True, pipeline=cutting)
        engine.dispose()

        assert cut["done"]
        assert summary.as_json() == {"total": 30, "tickets_created": h.tickets,
                                     "replies_threaded": h.replies, "duplicates": 0,
                                     "quarantined": {"unknown_sender": h.unknown},
                                     "failed": 0}
        after = stored(desk)
    with fresh_desk("postgres-redis", tmp_path / "never-cut") as clean:
        run_import(clean, write_mbox(tmp_path / "clean.mbox", h.messages), per_transaction=10,
                   notify=True)
        assert after == stored(clean)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_batch_keeps_the_hourly_limits_of_one_email_per_transaction(
        kind: str, tmp_path: Path) -> None:
    """The flood limit's and the automatic-mail limit's counts: on SQLite a batch reads
    each sender's and recipient's window once and counts the rest in memory
    (``desk.recent``); the outcomes are those of one email per transaction."""
    senders = ["client0", "client0", "client1", "client2", "client1", "client2", "client3"]
    emails = [make_email(sender=f"{who}@client.example", subject=f"Question {i}")
              for i, who in enumerate(senders)]
    outcomes = {}
    for per_transaction in (1, len(emails)):
        path = tmp_path / f"per{per_transaction}"
        with fresh_desk(kind, path, desk_extra="auto_reply_limit_per_hour = 1") as desk:
            with statements_run(desk) as seen:
                summary = run_import(desk, write_mbox(path / "in.mbox", emails),
                                     per_transaction=per_transaction, notify=True)
            outcomes[per_transaction] = (
                summary.tickets_created,
                [(o["template"], o["to"], o["status"]) for o in desk.outbox()])
        kinds = {"SELECT COUNT(TICKETS.ID)": "count tickets",
                 "SELECT COUNT(OUTBOX.ID)": "count automatic mail",
                 "SELECT TICKETS.CREATED_AT": "read tickets",
                 "SELECT OUTBOX.CREATED_AT": "read automatic mail"}
        counted = Counter(label for s in seen for start, label in kinds.items()
                          if s.startswith(start))
        if per_transaction > 1 and kind == "sqlite":
            # each sender's tickets and each recipient's automatic mail read once
            assert counted == {"read tickets": 4, "read automatic mail": 4}
        else:
            assert counted == {"count tickets": 7, "count automatic mail": 7}
    assert outcomes[1] == outcomes[len(emails)]
    tickets, drafts = outcomes[1]
    assert tickets == 7
    # client0, client1 and client2 opened two tickets each: their second acknowledgement
    # is over the limit of one automatic email an hour
    acks = Counter(status for template, _, status in drafts if template == "acknowledgement")
    assert acks == Counter({"queued": 4, "suppressed": 3})


class AheadLog:
    """A ``RenderAhead`` that renders nothing and logs when it is told what."""

    def __init__(self, log: list[str]):
        self.log = log

    def queued(self, row: Outbox, ticket: Any) -> None:
        self.log.append("queued")

    def recorded(self) -> None:
        self.log.append("recorded")

    def rendered(self, row: Outbox) -> None:
        self.log.append("rendered")


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_batch_tells_its_renderer_it_is_recorded_before_it_commits(
        kind: str, tmp_path: Path) -> None:
    """So that a helper process renders the batch's last drafts while it commits."""
    with fresh_desk(kind, tmp_path) as desk:
        raw_ids = [desk.app.accept(make_email(sender=f"client{i}@client.example",
                                              subject=f"Question {i}").as_bytes(),
                                   Envelope(), "import:mbox", enqueue=False).raw_id
                   for i in range(3)]
        log: list[str] = []
        event.listen(desk.app.engine, "commit", lambda conn: log.append("commit"))
        process_batch(desk.app.services, raw_ids, ahead=AheadLog(log))
    first_commit = log.index("commit")
    assert log[:first_commit] == ["queued"] * 6 + ["recorded"]
    assert log.count("rendered") == 6 and log.index("rendered") > first_commit


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_batchs_drafts_are_stored_rendered_in_one_transaction(
        kind: str, tmp_path: Path) -> None:
    """More drafts than ``RENDER_BATCH``, all in hand: one UPDATE (an executemany) and one
    commit for them all, not one per RENDER_BATCH."""
    emails = [make_email(sender=f"client{i}@client.example", subject=f"Question {i}")
              for i in range(RENDER_BATCH)]          # two drafts each
    with fresh_desk(kind, tmp_path) as desk:
        with statements_run(desk) as seen:
            summary = run_import(desk, write_mbox(tmp_path / "in.mbox", emails),
                                 per_transaction=len(emails), notify=True, workers=0)
        assert summary.tickets_created == len(emails)
        assert {o["status"] for o in desk.outbox()} == {"queued"}
        assert len(desk.outbox()) == 2 * RENDER_BATCH
    assert seen.count("UPDATE OUTBOX SET") == 1


def test_a_row_held_back_that_cannot_be_written_records_the_batch_again_with_savepoints(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite holds a batch's new rows back and writes them together (``rows.
    buffered_rows``). When one of them cannot be written (here a message whose dedupe key
    a step stored meanwhile, behind the batch's back), the whole transaction is rolled
    back and the batch recorded again, each email in a savepoint: every email lands once
    and nothing of the first attempt is left."""
    with fresh_desk("sqlite", tmp_path) as desk:
        emails = [make_email(sender=f"client{i}@client.example", subject=f"Question {i}")
                  for i in range(5)]
        target = emails[2]["Message-ID"]
        staged = {"done": False}

        def store_its_key_behind_the_batch(ctx: Inbound) -> None:
            if staged["done"] or ctx.parsed is None or ctx.parsed.message_id != target:
                return
            staged["done"] = True     # the first attempt only
            assert ctx.ticket is not None
            ctx.session.connection().execute(
                Message.__table__.insert().values(
                    ticket_id=ctx.ticket.id, direction="in", kind="public",
                    dedupe_key=f"in:{target}", message_id=target, subject="behind",
                    created_at=ctx.now).execution_options(**{NEEDS_NO_BUFFERED_ROWS: True}))

        pipeline = dataclasses.replace(BUILTIN, notify=[
            *BUILTIN.notify, Step("behind the batch", store_its_key_behind_the_batch)])
        with caplog.at_level(logging.INFO, logger="postdesk.inbound"):
            summary = run_import(desk, write_mbox(tmp_path / "held.mbox", emails),
                                 per_transaction=5, pipeline=pipeline)
        again = [r.getMessage() for r in caplog.records
                 if "recording the batch again" in r.getMessage()]
        assert len(again) == 1 and "IntegrityError" in again[0]
        assert summary.tickets_created == 5
        with desk.app.sessions() as s:
            subjects = list(s.scalars(select(Message.subject).where(
                Message.direction == "in").order_by(Message.id)))
        assert subjects == [f"Question {i}" for i in range(5)]
