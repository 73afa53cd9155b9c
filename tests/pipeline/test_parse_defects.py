"""The record phase keeps what the lenient parser repaired on the message it stores
(``messages.parse_defects``), read back from the database; a clean email stores SQL
NULL. And how many of them a message keeps (``stored_defects``)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Message
from postdesk.workflow.desk.tickets import MAX_DEFECT_CHARS, MAX_DEFECTS, stored_defects
from tests.pipeline.conftest import InboundBuilder
from tests.support import make_email

TWO_FROMS = (Path(__file__).parent.parent / "fidelity" / "fixtures"
             / "1a-two-from-first-garbage.eml")


def stored(session: Session, message_id: int) -> object:
    session.flush()
    return session.execute(select(Message.parse_defects)
                           .where(Message.id == message_id)).scalar_one()


def test_the_defects_of_a_damaged_email_are_stored_on_its_message(
        inbound: InboundBuilder, session: Session) -> None:
    ctx = inbound(TWO_FROMS.read_bytes(), envelope_from="alice@client.example",
                  through="record")
    assert ctx.message is not None and ctx.message.from_addr == "alice@client.example"
    assert stored(session, ctx.message.id) == ctx.email.defects
    assert "2 From: header fields; the sender is taken from number 2" in ctx.email.defects


def test_a_clean_email_stores_no_defects_as_sql_null(
        inbound: InboundBuilder, session: Session) -> None:
    ctx = inbound(make_email(), through="record")
    assert ctx.message is not None
    assert stored(session, ctx.message.id) is None
    # None read back could also be the JSON text 'null'; the row must hold SQL NULL.
    assert session.scalar(select(Message.id).where(
        Message.id == ctx.message.id, Message.parse_defects.is_(None))) == ctx.message.id


def test_stored_defects_are_none_for_none_and_kept_as_they_are_when_few() -> None:
    assert stored_defects([]) is None
    assert stored_defects(["a", "b"]) == ["a", "b"]


def test_a_flood_of_defects_keeps_the_first_few_and_counts_the_rest() -> None:
    many = [f"part {n}: InvalidBase64PaddingDefect" for n in range(MAX_DEFECTS + 7)]
    kept = stored_defects(many)
    assert kept == [*many[:MAX_DEFECTS], "and 7 more"]


def test_a_defect_quoting_a_huge_header_is_cut_to_a_line() -> None:
    [kept] = stored_defects(["address-headers: " + "x" * 10_000]) or []
    assert len(kept) == MAX_DEFECT_CHARS and kept.endswith("\u2026")
    assert kept.startswith("address-headers: xxx")
