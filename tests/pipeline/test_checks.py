"""The checks, one at a time: each annotates the Inbound or ends processing with a named
outcome, and none of them writes to the database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from postdesk.mail.classify import Classification
from postdesk.mail.tokens import make_message_id, make_reply_address
from postdesk.storage.db import read_only
from postdesk.workflow.pipeline import checks
from postdesk.workflow.pipeline.builtin import CHECKS
from postdesk.workflow.pipeline.runner import Duplicate, Handled, Outcome, Quarantine, run_steps
from tests.desk.conftest import SECRET
from tests.pipeline.conftest import InboundBuilder
from tests.support import BASECO, make_email

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mail"

STRICT_DESK = BASECO + """
[[orgs]]
slug = "strictco"
name = "Strict Co"
plan = "base"
domains = ["strict.example"]
require_dkim = true
"""


@pytest.fixture
def config_extra() -> str:
    return STRICT_DESK


def ours(ticket_id: int | None, nonce: str = "n0nce1") -> str:
    return make_message_id(SECRET, ticket_id, nonce, "desk.example")


def outcome_of(step: Any, ctx: Any) -> Outcome:
    with pytest.raises(Outcome) as raised:
        step.run(ctx)
    return raised.value


# --- parse -------------------------------------------------------------------------------

def test_bytes_that_are_not_an_email_are_quarantined_unparseable(
        inbound: InboundBuilder) -> None:
    ctx = inbound(b"  \r\n  ")
    outcome = outcome_of(checks.parse, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "unparseable"
    assert ctx.parsed is None


def test_parse_keeps_the_parsed_email_on_the_context(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(subject="Printer on fire", message_id="<p1@client.example>"))
    checks.parse.run(ctx)
    assert ctx.email.subject == "Printer on fire"
    assert ctx.email.message_id == "<p1@client.example>"


# --- classify_mail ---------------------------------------------------------------------

def test_own_message_id_coming_back_is_quarantined_as_loop(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(message_id=ours(7)), through="parse")
    outcome = outcome_of(checks.classify_mail, ctx)
    assert isinstance(outcome, Quarantine)
    assert outcome.reason == "loop"
    assert ours(7) in outcome.detail


def test_a_message_id_like_ours_signed_by_another_desk_is_no_loop(
        inbound: InboundBuilder) -> None:
    forged = make_message_id(b"another desk", 7, "n0nce1", "desk.example")
    ctx = inbound(make_email(message_id=forged), through="parse")
    checks.classify_mail.run(ctx)
    assert not ctx.auto_reply


def test_a_dsn_is_quarantined_as_bounce_with_its_verdict(inbound: InboundBuilder) -> None:
    ctx = inbound((FIXTURES / "dsn.eml").read_bytes(), envelope_from="", through="parse")
    outcome = outcome_of(checks.classify_mail, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "bounce"
    verdict = outcome.data
    assert isinstance(verdict, Classification)
    assert verdict.kind == "bounce"
    assert verdict.bounced_addresses == ["gone@client.example"]
    assert verdict.permanent is True
    assert verdict.original_message_id == "<pd.1042.7@desk.example>"
    assert "gone@client.example" in outcome.detail


def test_an_out_of_office_reply_is_flagged_and_goes_on(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}),
                  through="parse")
    checks.classify_mail.run(ctx)
    assert ctx.auto_reply
    assert ctx.auto_reason


def test_mail_a_person_wrote_is_not_flagged(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(), through="parse")
    checks.classify_mail.run(ctx)
    assert not ctx.auto_reply


# --- identify ----------------------------------------------------------------------------

def test_identify_finds_the_org_of_a_domain_contact(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="carol@client.example"), through="classify_mail")
    checks.identify.run(ctx)
    assert ctx.sender is not None
    assert (ctx.sender.kind, ctx.sender.org_slug, ctx.sender.listed_contact) == (
        "contact", "clientco", False)
    assert ctx.org is not None and ctx.org.slug == "clientco"
    assert ctx.from_client and not ctx.from_staff


def test_identify_finds_a_listed_contact_outside_the_org_domains(
        inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="ops@partner.example"), through="classify_mail")
    checks.identify.run(ctx)
    assert ctx.sender is not None and ctx.sender.listed_contact and ctx.sender.can_approve
    assert ctx.org is not None and ctx.org.slug == "clientco"


def test_identify_knows_staff_and_gives_them_no_org(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="Dev1@Agency.Example"), through="classify_mail")
    checks.identify.run(ctx)
    assert ctx.from_staff
    assert ctx.org is None


def test_unknown_sender_is_quarantined_unknown_sender(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="mallory@elsewhere.example"), through="classify_mail")
    outcome = outcome_of(checks.identify, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "unknown_sender"
    assert "mallory@elsewhere.example" in outcome.detail
    assert ctx.org is None


def test_an_auto_reply_from_an_unknown_sender_is_quarantined_as_auto_reply(
        inbound: InboundBuilder) -> None:
    """So the runner's notice to unknown senders is never sent to a machine."""
    ctx = inbound(make_email(sender="mallory@elsewhere.example",
                             headers={"Auto-Submitted": "auto-replied"}),
                  through="classify_mail")
    outcome = outcome_of(checks.identify, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "auto_reply"


def test_a_released_unknown_sender_is_filed_under_the_org_chosen_on_release(
        inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="mallory@elsewhere.example"), authorised=True,
                  release_org="baseco", through="classify_mail")
    checks.identify.run(ctx)
    assert ctx.from_client
    assert ctx.org is not None and ctx.org.slug == "baseco"


def test_a_released_unknown_sender_with_no_org_chosen_stays_unknown(
        inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="mallory@elsewhere.example"), authorised=True,
                  through="classify_mail")
    outcome = outcome_of(checks.identify, ctx)
    assert outcome.reason == "unknown_sender"


# --- verify_sender -----------------------------------------------------------------------

def test_an_unsigned_email_from_an_org_that_requires_dkim_is_quarantined(
        inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="sam@strict.example"), through="identify")
    outcome = outcome_of(checks.verify_sender, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "unauthenticated"
    assert ctx.sender_verified is False


def test_orgs_that_do_not_require_dkim_are_not_checked(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="alice@client.example"), through="identify")
    checks.verify_sender.run(ctx)
    assert ctx.sender_verified is True


def test_a_released_message_needs_no_dkim(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="sam@strict.example"), authorised=True, through="identify")
    checks.verify_sender.run(ctx)
    assert ctx.sender_verified is True


# --- deduplicate -------------------------------------------------------------------------

def test_deduplicate_ends_with_duplicate_when_the_message_id_is_on_a_ticket(
        inbound: InboundBuilder) -> None:
    first = inbound(make_email(message_id="<same@client.example>"), through="record")
    assert first.ticket is not None
    # The same email by another door: other bytes, the same Message-ID.
    again = inbound(make_email(message_id="<same@client.example>",
                               headers={"X-Delivered-By": "imap"}), through="identify")
    outcome = outcome_of(checks.deduplicate, again)
    assert isinstance(outcome, Duplicate) and outcome.reason == "message_id"
    assert outcome.data == first.ticket.id


def test_deduplicate_lets_a_new_message_id_through(inbound: InboundBuilder) -> None:
    inbound(make_email(message_id="<one@client.example>"), through="record")
    ctx = inbound(make_email(message_id="<two@client.example>"), through="identify")
    checks.deduplicate.run(ctx)


# --- balance_request ---------------------------------------------------------------------

@pytest.mark.parametrize("subject", ["balance", "Re: Balance", "  BALANCE "])
def test_a_client_asking_for_the_balance_is_handled_without_a_ticket(
        inbound: InboundBuilder, subject: str) -> None:
    ctx = inbound(make_email(subject=subject), through="deduplicate")
    outcome = outcome_of(checks.balance_request, ctx)
    assert isinstance(outcome, Handled) and outcome.reason == "balance_request"
    assert outcome.data == "answer"


def test_an_imported_balance_request_is_not_answered(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(subject="balance"), notify=False, through="deduplicate")
    outcome = outcome_of(checks.balance_request, ctx)
    assert outcome.reason == "balance_request" and outcome.data is None


def test_a_staff_email_about_balance_is_not_a_balance_request(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="dev1@agency.example", subject="balance"),
                  through="deduplicate")
    checks.balance_request.run(ctx)


# --- locate_ticket -----------------------------------------------------------------------

def test_a_reply_to_our_email_is_located_on_its_ticket(inbound: InboundBuilder) -> None:
    first = inbound(make_email(), through="record")
    assert first.ticket is not None
    reply = inbound(make_email(subject="Re: thanks", in_reply_to=ours(first.ticket.id)),
                    through="balance_request")
    checks.locate_ticket.run(reply)
    assert reply.ticket is not None and reply.ticket.id == first.ticket.id
    assert reply.matched_by == "our_message_id"


def test_a_new_email_is_located_nowhere(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(), through="balance_request")
    checks.locate_ticket.run(ctx)
    assert ctx.ticket is None and ctx.matched_by is None


# --- staff_trust -------------------------------------------------------------------------

def test_a_staff_reply_to_the_signed_reply_address_is_trusted(
        inbound: InboundBuilder) -> None:
    first = inbound(make_email(), through="record")
    assert first.ticket is not None
    address = make_reply_address(SECRET, "support@desk.example", "PD", first.ticket.id)
    ctx = inbound(make_email(sender="dev1@agency.example", to=address, body="On it."),
                  envelope_from="dev1@agency.example", through="locate_ticket")
    assert ctx.matched_by == "reply_address"
    checks.staff_trust.run(ctx)


def test_a_staff_email_naming_a_ticket_only_by_subject_is_quarantined(
        inbound: InboundBuilder) -> None:
    first = inbound(make_email(), through="record")
    assert first.ticket is not None
    ctx = inbound(make_email(sender="dev1@agency.example",
                             subject=f"Re: [PD-{first.ticket.id}] help"),
                  through="locate_ticket")
    assert ctx.matched_by == "subject_token"
    outcome = outcome_of(checks.staff_trust, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "unauthenticated"
    assert "no valid ticket token" in outcome.detail


def test_a_staff_reply_sent_from_another_domain_is_quarantined(
        inbound: InboundBuilder) -> None:
    first = inbound(make_email(), through="record")
    assert first.ticket is not None
    address = make_reply_address(SECRET, "support@desk.example", "PD", first.ticket.id)
    ctx = inbound(make_email(sender="dev1@agency.example", to=address),
                  envelope_from="bounce@evil.example", through="locate_ticket")
    outcome = outcome_of(checks.staff_trust, ctx)
    assert outcome.reason == "unauthenticated" and "envelope sender" in outcome.detail


# --- checks write nothing ----------------------------------------------------------------

@pytest.fixture
def statements(session: Session) -> Iterator[list[str]]:
    """The SQL statements the session's connection runs while the test does."""
    seen: list[str] = []
    connection = session.connection()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    yield seen
    event.remove(connection, "before_cursor_execute", record)


SCENARIOS = {
    "new client email": lambda first: make_email(),
    "client reply": lambda first: make_email(in_reply_to=ours(first.ticket.id)),
    "staff reply": lambda first: make_email(
        sender="dev1@agency.example", to=make_reply_address(
            SECRET, "support@desk.example", "PD", first.ticket.id)),
    "unknown sender": lambda first: make_email(sender="mallory@elsewhere.example"),
    "bounce": lambda first: (FIXTURES / "dsn.eml").read_bytes(),
    "balance request": lambda first: make_email(subject="balance"),
    "duplicate": lambda first: make_email(message_id=first.email.message_id,
                                          headers={"X-Again": "1"}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_checks_write_nothing(inbound: InboundBuilder, session: Session,
                              statements: list[str], scenario: str) -> None:
    first = inbound(make_email(sender="bob@base.example"), through="record")
    ctx = inbound(SCENARIOS[scenario](first))
    session.commit()                   # as in process: the checks begin a transaction
    statements.clear()

    with read_only(session):
        run_steps(CHECKS, ctx)
        assert not session.new and not session.dirty and not session.deleted

    writes = [s for s in statements
              if s.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert statements, "the checks read nothing: the recorder is not listening"
