"""``postdesk import`` accepts messages in batches (one transaction per batch, the blobs
published side by side) and then records them N per transaction: the per-email outcomes
are those of importing one by one, and a crash anywhere in a batch re-runs without
creating anything twice (a crash while a transaction records: ``test_import_transactions``)."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import wait
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from postdesk import importer as importer_module
from postdesk.importer import AUTO_MIN_MESSAGES, Importer, ImportSummary, Item, default_workers
from postdesk.mail.parse import parse_email
from postdesk.storage.blobs import BlobStore
from postdesk.storage.models import Message, Outbox, RawMessage, Ticket
from postdesk.workflow.pipeline.builtin import BUILTIN
from postdesk.workflow.rules.config import parse_config
from tests.conftest import start_desk, stop_desk
from tests.mailgen import history, write_mbox
from tests.support import backend, config_text, make_email

FIXTURES = Path(__file__).parent / "fixtures" / "mail"

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


def _mbox_with_duplicates(tmp_path: Path, count: int, tag: str) -> tuple[Path, Any, int]:
    """A history, plus three messages again byte for byte: one right after itself (same
    batch), two far from the first copy (another batch)."""
    h = history(count, tag=tag)
    copies = [h.messages[3], h.messages[0], h.messages[1]]
    messages = [*h.messages[:4], copies[0], *h.messages[4:], *copies[1:]]
    return write_mbox(tmp_path / f"{tag}.mbox", messages), h, len(copies)


def _import(desk: Any, path: Path, **kw: Any) -> ImportSummary:
    importer = Importer(desk.app.services, desk.app.dispatch, "mbox", warn=print, **kw)
    return importer.run(importer.sources([str(path)]))


def _state(desk: Any) -> dict[str, Any]:
    with desk.app.sessions() as s:
        tickets = list(s.scalars(select(Ticket.subject).order_by(Ticket.id)))
        inbound = s.scalar(select(func.count(Message.id)).where(Message.direction == "in"))
        raws = s.scalar(select(func.count(RawMessage.id)))
        pending = s.scalar(select(func.count(RawMessage.id))
                           .where(RawMessage.status == "pending"))
    return {"tickets": tickets, "inbound": inbound, "raws": raws, "pending": pending}


@pytest.mark.parametrize(("batch", "per_transaction"), [(1, 1), (7, 3), (200, 100)])
def test_batches_give_the_outcomes_of_one_by_one(make_desk: Any, tmp_path: Path,
                                                   batch: int, per_transaction: int) -> None:
    desk = make_desk(smtp=False, workers=False)
    path, h, copies = _mbox_with_duplicates(tmp_path, 60, f"b{batch}")
    summary = _import(desk, path, batch_messages=batch, per_transaction=per_transaction)
    assert summary.as_json() == {
        "total": 60 + copies, "tickets_created": h.tickets, "replies_threaded": h.replies,
        "duplicates": copies, "quarantined": {"unknown_sender": h.unknown}, "failed": 0}
    state = _state(desk)
    # Tickets numbered in the mbox's order, as one by one; every message stored once.
    opened = [m["Subject"] for m in h.messages if m["Subject"].startswith("Problem number")]
    assert state["tickets"] == opened
    assert state == {"tickets": opened, "inbound": h.tickets + h.replies, "raws": 60,
                     "pending": 0}
    again = _import(desk, path, batch_messages=batch, per_transaction=per_transaction)
    assert again.as_json()["duplicates"] == 60 + copies and again.tickets_created == 0
    assert _state(desk) == state


def test_crash_while_publishing_a_batch_leaves_no_row(make_desk: Any, tmp_path: Path) -> None:
    # Every email a file (none kept in its row), so the batch has blobs to publish.
    desk = make_desk(smtp=False, workers=False, desk_extra="raw_in_database_bytes = 0")
    h = history(30, tag="blobs")
    path = write_mbox(tmp_path / "blobs.mbox", h.messages)
    blobs: BlobStore = desk.app.services.blobs
    real_put = blobs.put
    calls = {"n": 0}

    def failing_put(data: Any, digest: str | None = None) -> str:
        calls["n"] += 1
        if calls["n"] == 15:          # in the second batch
            raise OSError(28, "No space left on device")
        return real_put(data, digest)

    setattr(blobs, "put", failing_put)  # noqa: B010 - an instance attribute, for this test
    try:
        with pytest.raises(OSError):
            _import(desk, path, batch_messages=10)
    finally:
        del blobs.put
    # The first batch is in; of the second, some blobs at most, no row.
    assert _state(desk)["raws"] == 10 and _state(desk)["pending"] == 0

    summary = _import(desk, path, batch_messages=10)
    assert summary.duplicates == 10 and summary.total == 30
    state = _state(desk)
    assert len(state["tickets"]) == h.tickets and state["raws"] == 30
    assert state["inbound"] == h.tickets + h.replies and state["pending"] == 0


def test_batches_bounded_by_count_and_bytes() -> None:
    sizes = [10, 10, 10, 50, 10, 10, 10, 10]

    def reader(size: int) -> Callable[[], bytes]:
        return lambda: b"x" * size

    items = [Item(f"m{i}", reader(n)) for i, n in enumerate(sizes)]
    importer = Importer.__new__(Importer)
    importer.summary = ImportSummary()
    importer.warn = print
    importer.batch_messages, importer.batch_bytes = 3, 40
    batches = [[item.label for item, _raw in b] for b in importer._batches(items, None)]
    # A batch closes at 3 messages or once it holds 40 bytes or more.
    assert batches == [["m0", "m1", "m2"], ["m3"], ["m4", "m5", "m6"], ["m7"]]


def test_byte_duplicate_in_one_batch_is_processed_once(make_desk: Any, tmp_path: Path) -> None:
    desk = make_desk(smtp=False, workers=False)
    h = history(3, tag="twice")
    path = write_mbox(tmp_path / "twice.mbox", [h.messages[0], *h.messages])
    summary = _import(desk, path)
    assert (summary.total, summary.duplicates) == (4, 1)
    assert _state(desk)["raws"] == 3


def _import_alone(tmp_path: Path, mbox: Path, importer_cls: type[Importer], **kw: Any
                  ) -> tuple[Importer, dict[str, Any]]:
    """Import with ``--notify`` into a desk of its own (SQLite), recording 10 emails per
    transaction; the summary and what was stored."""
    with backend("sqlite", tmp_path) as be:
        desk = start_desk(parse_config(config_text(be, tmp_path / "data"), environ={}),
                          smtp=False, workers=False)
        try:
            importer = importer_cls(desk.app.services, desk.app.dispatch, "mbox",
                                    batch_messages=25, per_transaction=10, notify=True, **kw)
            summary = importer.run(importer.sources([str(mbox)]))
            with desk.app.sessions() as s:
                stored = {
                    "summary": summary.as_json(),
                    "raws": [(r.status, r.reason, r.detail, r.ticket_id, r.subject) for r in
                             s.scalars(select(RawMessage).order_by(RawMessage.id))],
                    "messages": [(m.ticket_id, m.direction, m.subject, m.to,
                                  m.text if m.direction == "in" else _dated(m.text),
                                  m.stripped_text if m.direction == "in" else "")
                                 for m in s.scalars(select(Message).order_by(Message.id))],
                    # Message-IDs and Dates are made afresh: the rest of each email.
                    "outbox": [(o.ticket_id, o.template, o.status, o.to, o.subject,
                                o.in_reply_to, _body(o.raw)) for o in
                               s.scalars(select(Outbox).order_by(Outbox.id))]}
        finally:
            stop_desk(desk)
    return importer, stored


def _body(raw: bytes | None) -> str:
    """The text of an outgoing email, its times left out (they are the clock's)."""
    assert raw is not None
    part = next(p for p in BytesParser(policy=policy.default).parsebytes(raw).walk()
                if p.get_content_type() == "text/plain")
    return _dated(part.get_content())


def _dated(text: str | None) -> str:
    """The text with its times, dates and spans ("in 13h 41m": how long is left, which
    changes when the two imports compared straddle a minute) made ``<t>``."""
    return re.sub(r"\d{1,2}:\d{2}|\d{4}-\d{2}-\d{2}|\d+ (minutes?|hours?)|\b\d+[dhm]\b",
                  "<t>", text or "")


def _mixed_mbox(tmp_path: Path) -> tuple[Path, Any]:
    """New tickets, replies to tickets opened earlier in the same mbox (one quoting the
    answer it replies to), unknown senders, a message that is no email at all, a bounce
    and an out-of-office reply on no ticket."""
    h = history(40, tag="ahead")
    quoted = make_email(sender="user0@client.example", subject=f"Re: {h.messages[0]['Subject']}",
                        in_reply_to=h.messages[0]["Message-ID"],
                        body="Still broken.\n\nOn Monday, Support wrote:\n> We are on it.\n")
    garbage = b"\x00\xff\xfe not an email \x00\n"
    bounce = (FIXTURES / "dsn.eml").read_bytes()
    away = make_email(sender="user1@client.example", subject="Out of office",
                      headers={"Auto-Submitted": "auto-replied"})
    raws = [m.as_bytes() for m in h.messages]
    return write_mbox(tmp_path / "ahead.mbox", [*raws[:20], garbage, quoted.as_bytes(),
                                                bounce, away.as_bytes(), *raws[20:]]), h


class Patient(Importer):
    """Waits for each message's parse-ahead result, so that every one is used; counts
    the messages whose result was used (a batch recorded again asks again)."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.used: set[str] = set()

    @property
    def parsed(self) -> int:
        return len(self.used)

    def _parsed_ahead(self, digest: str) -> Any:
        entry = self._ahead.get(digest)
        if entry is not None:
            wait([entry[0]], timeout=60)
        ahead = super()._parsed_ahead(digest)
        if ahead is not None:
            self.used.add(digest)
        return ahead


def test_parsing_ahead_in_a_helper_process_changes_no_outcome(tmp_path: Path) -> None:
    mbox, h = _mixed_mbox(tmp_path)
    _, plain = _import_alone(tmp_path / "inline", mbox, Importer, workers=0)
    importer, helped = _import_alone(tmp_path / "helped", mbox, Patient, workers=1)
    assert isinstance(importer, Patient) and importer.parsed == 44   # every message
    assert helped == plain
    assert plain["summary"]["quarantined"] == {"unknown_sender": h.unknown, "unparseable": 1,
                                               "bounce": 1, "auto_reply": 1}
    assert plain["summary"]["replies_threaded"] == h.replies + 1
    # Every email the desk wrote (acknowledgements, staff notifications, notices) is the
    # same, rendered and queued.
    assert len(plain["outbox"]) > 2 * h.tickets
    assert {status for _t, _template, status, *_rest in plain["outbox"]} == {"queued"}


def test_a_helper_that_dies_mid_import_changes_no_outcome(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    mbox, h = _mixed_mbox(tmp_path)
    _, plain = _import_alone(tmp_path / "inline", mbox, Importer, workers=0)
    poison = h.messages[28]["Message-ID"].encode()   # in the second batch read

    def dies_at_the_poison(raw: bytes, **kw: Any) -> Any:
        if poison in raw:
            os._exit(70)   # the helper dies at once, as on a crash in C code
        return parse_email(raw, **kw)

    # The helpers are forked from this process, so they parse with this (importer.py's
    # reference: the pipeline's own parse step is left as it is).
    monkeypatch.setattr("postdesk.importer.parse_email", dies_at_the_poison)
    importer, helped = _import_alone(tmp_path / "helped", mbox, Patient, workers=1)
    assert helped == plain
    # The helper parsed some before it died; this process parsed the rest.
    assert isinstance(importer, Patient) and 0 < importer.parsed < 44


class RendersCounted(Importer):
    """Counts the drafts whose rendering came from a helper process, and the times the
    helpers were given up."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.from_helper = self.gave_up = 0
        renders = self._renders
        taken, give_up = renders.rendered, renders._give_up

        def rendered(row: Outbox) -> Any:
            done = taken(row)
            self.from_helper += done is not None
            return done

        def counted_give_up() -> None:
            self.gave_up += 1
            give_up()

        renders.rendered = rendered   # type: ignore[method-assign]
        renders._give_up = counted_give_up   # type: ignore[method-assign]


def test_rendering_ahead_in_a_helper_process_changes_no_email(tmp_path: Path) -> None:
    mbox, h = _mixed_mbox(tmp_path)
    _, plain = _import_alone(tmp_path / "inline", mbox, Importer, workers=0)
    importer, helped = _import_alone(tmp_path / "helped", mbox, RendersCounted, workers=1)
    assert helped == plain
    assert isinstance(importer, RendersCounted)
    # Every draft the helper was given (all of them here: none sends a client's file).
    assert importer.from_helper == len(plain["outbox"]) > 2 * h.tickets


def at_the_tenth_rendering_in_the_helper(monkeypatch: pytest.MonkeyPatch,
                                         happens: Callable[[], object]) -> None:
    """Make the helper run ``happens`` when it starts its tenth rendering. Forked from
    this process, the helper renders with importer.py's reference to ``render_job``; the
    import's own rendering, in desk.outbox, is left as it is."""
    rendered_in_helper = {"n": 0}   # the helper's own count (it is a forked copy)
    real_render = importer_module.render_job

    def render(services: Any, job: Any) -> Any:
        rendered_in_helper["n"] += 1
        if rendered_in_helper["n"] == 10:
            happens()
        return real_render(services, job)

    monkeypatch.setattr(importer_module, "render_job", render)


def test_a_helper_that_dies_while_rendering_changes_no_email(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mbox, _h = _mixed_mbox(tmp_path)
    _, plain = _import_alone(tmp_path / "inline", mbox, Importer, workers=0)
    at_the_tenth_rendering_in_the_helper(monkeypatch, lambda: os._exit(70))
    importer, helped = _import_alone(tmp_path / "helped", mbox, RendersCounted, workers=1)
    assert helped == plain
    assert isinstance(importer, RendersCounted) and importer.from_helper < len(plain["outbox"])


def test_a_helper_stuck_while_rendering_is_given_up_and_changes_no_email(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mbox, _h = _mixed_mbox(tmp_path)
    _, plain = _import_alone(tmp_path / "inline", mbox, Importer, workers=0)
    # Ended with the import (the helper dies with its parent).
    at_the_tenth_rendering_in_the_helper(monkeypatch, lambda: time.sleep(3600))
    monkeypatch.setattr(importer_module, "RENDER_WAIT_S", 1.0)
    importer, helped = _import_alone(tmp_path / "helped", mbox, RendersCounted, workers=1)
    assert helped == plain
    # Given up once, at the stuck chunk (the drafts before the tenth were in it too):
    # no helper afterwards, this process rendered every draft.
    assert isinstance(importer, RendersCounted)
    assert (importer.gave_up, importer.from_helper) == (1, 0)


def test_a_helper_by_default_only_with_a_second_cpu_and_enough_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer_module, "_usable_cpus", lambda: 2)
    assert default_workers(AUTO_MIN_MESSAGES) == 1
    assert default_workers(AUTO_MIN_MESSAGES - 1) == 0
    # A benchmark's own pipeline (its steps wrapped to time them) stays in one process.
    assert default_workers(AUTO_MIN_MESSAGES, dataclasses.replace(BUILTIN)) == 0
    monkeypatch.setattr(importer_module, "_usable_cpus", lambda: 1)
    assert default_workers(10 * AUTO_MIN_MESSAGES) == 0


def test_a_batch_looks_up_the_message_ids_its_helper_parsed_in_one_statement(
        tmp_path: Path) -> None:
    """The same Message-ID in other bytes (a copy from another folder), in the same batch
    and in a later one: duplicates as without a helper, with the batch's keys looked up
    together instead of one statement per email."""
    h = history(30, tag="keys")

    def copy(message: Any) -> bytes:
        return b"X-Folder: Sent\r\n" + message.as_bytes()

    raws = [m.as_bytes() for m in h.messages]
    mbox = write_mbox(tmp_path / "keys.mbox",
                      [*raws[:3], copy(h.messages[2]), *raws[3:], copy(h.messages[0])])
    _, plain = _import_alone(tmp_path / "inline", mbox, Importer, workers=0)
    asked: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "WHERE messages.dedupe_key = " in statement:
            asked.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        _, helped = _import_alone(tmp_path / "helped", mbox, Patient, workers=1)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert helped == plain
    assert plain["summary"]["duplicates"] == 2
    # Asked one by one: each copy (its key was answered once already), nothing else.
    assert len(asked) == 2


class Watched(Patient):
    """Logs, in order, the messages handed to the helper to parse, the parts whose
    recording starts, and the drafts handed to it to render."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.log: list[tuple[str, int]] = []
        sent = self._renders._send

        def send() -> None:
            self.log.append(("render", len(self._renders._waiting)))
            sent()
        self._renders._send = send  # type: ignore[method-assign]

    def _submit_ahead(self, raws: Any, digests: Any) -> None:
        new = [d for d in digests if d not in self._ahead]
        super()._submit_ahead(raws, digests)
        if new:
            self.log.append(("parse", len(new)))

    def _process_all(self, raw_ids: Any, digests: Any = ()) -> Any:
        self.log.append(("record", len(digests)))
        return super()._process_all(raw_ids, digests)


def test_the_helper_parses_one_part_ahead_of_the_part_being_recorded(tmp_path: Path) -> None:
    """Each part (10 emails per transaction here) goes to the helper to parse while the
    part before it is recorded, also across batches (25 emails here): the drafts of the
    part being recorded, needed when it commits, never wait behind the parsing of more
    than one part. Every email is parsed once, and every parse is used."""
    mbox, _h = _mixed_mbox(tmp_path)
    importer, _stored = _import_alone(tmp_path / "helped", mbox, Watched, workers=1)
    assert isinstance(importer, Watched) and importer.parsed == 44
    parsed = recorded = 0
    for kind, count in importer.log:
        parsed += count if kind == "parse" else 0
        recorded += count if kind == "record" else 0
        if kind != "parse":   # a part is recorded, or its drafts are rendered
            assert recorded <= parsed <= recorded + 10, importer.log
    assert parsed == 44
    assert importer.log[:3] == [("parse", 10), ("parse", 10), ("record", 10)]
    # The next batch's first part is handed on while this batch's last part is recorded.
    assert importer.log[importer.log.index(("record", 5)) - 1] == ("parse", 10)


def test_a_batch_reads_the_hour_of_the_senders_its_helper_parsed_together(
        tmp_path: Path) -> None:
    """The automatic-mail limit counts each client's mail of the last hour: a batch reads
    that hour for every sender its helper parsed in one statement, instead of one per
    sender, and decides the same."""
    h = history(30, tag="hours")
    mbox = write_mbox(tmp_path / "hours.mbox", [m.as_bytes() for m in h.messages])
    one_by_one = "AND outbox.recipient = "
    together = "AND outbox.recipient IN ("
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM outbox" in statement and "outbox.automatic IS 1" in statement:
            seen.append(together if together in statement else one_by_one)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        _, plain = _import_alone(tmp_path / "inline", mbox, Importer, workers=0)
        alone = list(seen)
        seen.clear()
        _, helped = _import_alone(tmp_path / "helped", mbox, Patient, workers=1)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert helped == plain
    assert alone and set(alone) == {one_by_one}
    # 30 messages in batches of 25, 10 per transaction: four parts (10, 10, 5; 5), one
    # read for each, for all its senders.
    assert seen == [together] * 4
