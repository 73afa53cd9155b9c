"""The checks, one at a time: each annotates the Inbound or ends processing with a named
outcome, and none of them writes to the database."""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.mail.classify import Classification
from postdesk.mail.tokens import make_message_id, make_reply_address
from postdesk.storage.db import read_only
from postdesk.storage.models import Message, Outbox, Ticket
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.ticket_lookup import References
from postdesk.workflow.pipeline import checks, client, staff
from postdesk.workflow.pipeline.builtin import CHECKS
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Duplicate, Handled, Outcome, Quarantine, run_steps
from postdesk.workflow.rules.trust import Verdict
from tests.desk.conftest import SECRET
from tests.pipeline.conftest import InboundBuilder
from tests.support import BASECO, make_email

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mail"
DKIM_KEYS = Path(__file__).parent.parent / "fixtures" / "dkim"
STAFF = "dev1@agency.example"
ON_BEHALF = "#org baseco\n#requester bob@base.example\nBob phoned: the shop is down.\n"

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


def dkim_dns(name: bytes, timeout: int = 5) -> bytes | None:
    """The test key, published as selector ``test`` of any domain."""
    if name.startswith(b"test._domainkey."):
        return b"v=DKIM1; k=rsa; p=" + (DKIM_KEYS / "client.example.pub.b64").read_bytes().strip()
    return None


def signed(msg: EmailMessage, domain: str) -> bytes:
    """The email with a DKIM signature of ``domain`` (verifies with ``dkim_dns``)."""
    raw = msg.as_bytes(policy=policy.SMTP)
    key = (DKIM_KEYS / "client.example.key").read_bytes()
    signature: bytes = dkim.sign(
        raw, b"test", domain.encode(), key,
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"])
    return signature + raw


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


@pytest.mark.parametrize("envelope_from", [None, "alice@client.example"])
def test_a_classification_worked_out_ahead_is_taken_for_mail_with_no_envelope_sender(
        inbound: InboundBuilder, envelope_from: str | None) -> None:
    """The importer's helper classifies mail read from a file (no envelope sender) as it
    parses it; mail with an envelope sender is classified here."""
    ctx = inbound(make_email(subject="Out of office"), envelope_from=envelope_from,
                  through="parse")
    ctx.classified_without_envelope = Classification(kind="auto_reply", reason="ahead")
    checks.classify_mail.run(ctx)
    assert (ctx.auto_reply, ctx.auto_reason) == (
        (True, "ahead") if envelope_from is None else (False, ""))


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


# --- authenticate_sender -----------------------------------------------------------------

def test_an_unsigned_email_from_an_org_that_requires_dkim_fails_and_goes_on(
        inbound: InboundBuilder) -> None:
    """The check only finds the result; quarantining is the trust decision's (below)."""
    ctx = inbound(make_email(sender="sam@strict.example"), through="identify")
    checks.authenticate_sender.run(ctx)
    assert ctx.dkim is False
    assert ctx.sender_verified is False
    assert ctx.dkim_how


def test_a_signed_email_from_an_org_that_requires_dkim_passes(
        inbound: InboundBuilder, services: Services) -> None:
    services.dkim_dns = dkim_dns
    ctx = inbound(signed(make_email(sender="sam@strict.example"), "strict.example"),
                  through="identify")
    checks.authenticate_sender.run(ctx)
    assert ctx.dkim is True and ctx.sender_verified is True


def test_orgs_that_do_not_require_dkim_are_not_checked(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="alice@client.example"), through="identify")
    checks.authenticate_sender.run(ctx)
    assert ctx.dkim is None
    assert ctx.sender_verified is True


def test_a_released_message_is_not_checked_again(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="sam@strict.example"), authorised=True, through="identify")
    checks.authenticate_sender.run(ctx)
    assert ctx.dkim is None
    assert ctx.sender_verified is True


def test_unsigned_staff_mail_has_nothing_to_verify(inbound: InboundBuilder) -> None:
    """No signature and no trusted Authentication-Results: None, not a failure."""
    ctx = inbound(make_email(sender="dev1@agency.example"), through="identify")
    checks.authenticate_sender.run(ctx)
    assert ctx.dkim is None


def test_signed_staff_mail_is_verified_even_when_dkim_is_not_required(
        inbound: InboundBuilder, services: Services) -> None:
    services.dkim_dns = dkim_dns
    ctx = inbound(signed(make_email(sender="dev1@agency.example"), "agency.example"),
                  through="identify")
    checks.authenticate_sender.run(ctx)
    assert ctx.dkim is True


def test_staff_mail_whose_signature_does_not_verify_fails(
        inbound: InboundBuilder, services: Services) -> None:
    services.dkim_dns = dkim_dns
    raw = signed(make_email(sender="dev1@agency.example", body="On it."), "agency.example")
    ctx = inbound(raw.replace(b"On it.", b"Done."), through="identify")
    checks.authenticate_sender.run(ctx)
    assert ctx.dkim is False and ctx.sender_verified is False


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

def test_a_reply_to_our_email_gathers_its_ticket_and_decides_nothing(
        inbound: InboundBuilder) -> None:
    first = inbound(make_email(), through="record")
    assert first.ticket is not None
    reply = inbound(make_email(subject="Re: thanks", in_reply_to=ours(first.ticket.id)),
                    through="balance_request")
    checks.locate_ticket.run(reply)
    assert reply.references is not None
    assert [(r.ticket_id, r.how) for r in reply.references.client_refs] == [
        (first.ticket.id, "our_message_id")]
    assert reply.references.staff_token_ticket is None
    assert reply.ticket is None and reply.matched_by is None     # decide_trust's job


def test_a_new_email_gathers_nothing(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(), through="balance_request")
    checks.locate_ticket.run(ctx)
    assert ctx.references == References(None, None, ())
    assert ctx.ticket is None and ctx.matched_by is None


# --- decide_trust ------------------------------------------------------------------------
# The verdicts themselves are tested on ``decide`` (tests/rules/test_trust.py); these test
# that the check feeds it the real evidence and acts on what it says. The tokens are the
# ones the desk itself queued: the staff notification and the acknowledgement of a client's
# new ticket.

@dataclass(frozen=True)
class Opened:
    ticket: Ticket
    notification: Outbox       # to the staff member on rota: a staff-purpose Message-ID
    acknowledgement: Outbox    # to the client: a client-purpose Message-ID


@pytest.fixture
def opened(inbound: InboundBuilder, session: Session) -> Opened:
    """Alice (Client Co) opens a ticket; dev1, on rota, is notified."""
    ctx = inbound(make_email(sender="alice@client.example", subject="Shop is slow"),
                  through="notify_staff")
    assert ctx.ticket is not None
    rows = {r.template: r for r in session.scalars(
        select(Outbox).where(Outbox.ticket_id == ctx.ticket.id))}
    notification, ack = rows["staff_notification"], rows["acknowledgement"]
    assert notification.to == [STAFF] and ack.to == ["alice@client.example"]
    return Opened(ctx.ticket, notification, ack)


def quarantined_verdict(ctx: Inbound) -> tuple[Quarantine, Verdict]:
    outcome = outcome_of(checks.decide_trust, ctx)
    assert isinstance(outcome, Quarantine)
    assert isinstance(outcome.data, Verdict) and outcome.data.kind == "quarantine"
    assert ctx.verdict == outcome.data
    assert ctx.ticket is None
    return outcome, outcome.data


def test_a_staff_reply_to_the_staff_notification_with_the_exact_envelope_is_a_staff_reply(
        inbound: InboundBuilder, opened: Opened) -> None:
    ctx = inbound(make_email(sender=STAFF, subject=f"Re: {opened.notification.subject}",
                             in_reply_to=opened.notification.message_id, body="On it."),
                  envelope_from=STAFF, through="locate_ticket")
    checks.decide_trust.run(ctx)
    assert ctx.verdict == Verdict("staff_reply", ticket_id=opened.ticket.id)
    assert ctx.verdict.staff_authority
    assert ctx.ticket is not None and ctx.ticket.id == opened.ticket.id
    assert ctx.matched_by == "our_message_id"
    assert ctx.from_staff and ctx.org is None


def test_a_staff_reply_to_the_signed_reply_address_is_a_staff_reply(
        inbound: InboundBuilder, opened: Opened, services: Services) -> None:
    address = services.reply_address(opened.ticket.id)
    ctx = inbound(make_email(sender=STAFF, to=address, body="On it."),
                  envelope_from=f"<{STAFF.upper()}>", through="locate_ticket")
    checks.decide_trust.run(ctx)
    assert ctx.verdict is not None and ctx.verdict.kind == "staff_reply"
    assert ctx.ticket is not None and ctx.ticket.id == opened.ticket.id
    assert ctx.matched_by == "reply_address"


@pytest.mark.parametrize("envelope", ["nobody@agency.example", "dev2@agency.example",
                                      "bounce@evil.example"])
def test_a_staff_reply_whose_envelope_is_not_exactly_the_from_address_is_unauthenticated(
        inbound: InboundBuilder, opened: Opened, envelope: str) -> None:
    """Another address at the staff domain is not enough; the configured staff address,
    never the envelope, is the one to tell."""
    ctx = inbound(make_email(sender=STAFF, in_reply_to=opened.notification.message_id,
                             body="#status closed\nDone."),
                  envelope_from=envelope, through="locate_ticket")
    outcome, verdict = quarantined_verdict(ctx)
    assert outcome.reason == verdict.reason == "unauthenticated"
    assert verdict.notify_staff == STAFF
    assert "envelope sender" in outcome.detail
    assert not verdict.staff_authority


def test_a_staff_email_citing_only_the_acknowledgement_is_unauthenticated(
        inbound: InboundBuilder, opened: Opened) -> None:
    """The acknowledgement's Message-ID went to the client: it carries no staff
    authority, even with the exact envelope."""
    ctx = inbound(make_email(sender=STAFF, subject=opened.acknowledgement.subject,
                             in_reply_to=opened.acknowledgement.message_id,
                             body="#status closed"),
                  envelope_from=STAFF, through="locate_ticket")
    outcome, verdict = quarantined_verdict(ctx)
    assert outcome.reason == "unauthenticated"
    assert verdict.notify_staff == STAFF
    assert "staff notification" in outcome.detail


def test_a_staff_email_with_no_token_at_all_is_no_ticket(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender=STAFF, subject="Note to self"),
                  envelope_from=STAFF, through="locate_ticket")
    outcome, verdict = quarantined_verdict(ctx)
    assert outcome.reason == "no_ticket"
    assert verdict.notify_staff == STAFF


def test_an_unverified_staff_email_asking_for_a_ticket_on_behalf_is_unauthenticated(
        inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender=STAFF, body=ON_BEHALF), envelope_from=STAFF,
                  through="locate_ticket")
    outcome, verdict = quarantined_verdict(ctx)
    assert outcome.reason == "unauthenticated"
    assert "on behalf" in outcome.detail


def test_a_dkim_signed_staff_email_asking_for_a_ticket_on_behalf_is_a_staff_action(
        inbound: InboundBuilder, services: Services) -> None:
    services.dkim_dns = dkim_dns
    ctx = inbound(signed(make_email(sender=STAFF, body=ON_BEHALF), "agency.example"),
                  envelope_from=STAFF, through="locate_ticket")
    checks.decide_trust.run(ctx)
    assert ctx.verdict == Verdict("staff_action", action="on_behalf")
    assert ctx.ticket is None and ctx.from_staff


@pytest.mark.parametrize("headers, envelope", [
    ({"Auto-Submitted": "auto-replied"}, ""),
    ({"Auto-Submitted": "auto-replied"}, "nobody@agency.example"),
    ({}, "<>"),
], ids=["auto-submitted, null envelope", "auto-submitted, other envelope",
        "null envelope alone"])
def test_untrusted_automatic_staff_mail_is_quarantined_as_an_auto_reply_not_reported(
        inbound: InboundBuilder, opened: Opened, headers: dict[str, str],
        envelope: str) -> None:
    """An out-of-office answering a notification that fails the staff checks (mail with a
    null envelope counts as automatic): quarantined, and not reported to the staff member
    as a forgery."""
    ctx = inbound(make_email(sender=STAFF, subject="Out of office",
                             in_reply_to=opened.notification.message_id, headers=headers),
                  envelope_from=envelope, through="locate_ticket")
    assert ctx.auto_reply
    outcome = outcome_of(checks.decide_trust, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "auto_reply"
    assert outcome.data is None                         # no reaction tells anyone
    assert ctx.ticket is None


def test_a_genuine_staff_out_of_office_is_noted_on_the_ticket_and_never_relayed(
        inbound: InboundBuilder, opened: Opened, session: Session) -> None:
    ctx = inbound(make_email(sender=STAFF, subject="Out of office",
                             in_reply_to=opened.notification.message_id,
                             headers={"Auto-Submitted": "auto-replied"}),
                  envelope_from=STAFF, through="locate_ticket")
    checks.decide_trust.run(ctx)
    assert ctx.verdict == Verdict("staff_reply", ticket_id=opened.ticket.id)
    queued = list(ctx.outbox.queued_ids)
    outcome = outcome_of(staff.staff_mail, ctx)
    assert isinstance(outcome, Handled) and outcome.reason == "auto_reply"
    assert ctx.outbox.queued_ids == queued                       # nothing relayed
    kinds = list(session.scalars(select(Message.kind).where(
        Message.ticket_id == opened.ticket.id).order_by(Message.id)))
    assert kinds == ["public", "system"]


def test_a_client_reply_to_the_acknowledgement_is_client_content_on_its_ticket(
        inbound: InboundBuilder, opened: Opened) -> None:
    ctx = inbound(make_email(sender="alice@client.example",
                             in_reply_to=opened.acknowledgement.message_id),
                  through="locate_ticket")
    checks.decide_trust.run(ctx)
    assert ctx.verdict == Verdict("client_content", ticket_id=opened.ticket.id,
                                  org_slug="clientco", matched_by="our_message_id")
    assert ctx.ticket is not None and ctx.ticket.id == opened.ticket.id
    assert ctx.matched_by == "our_message_id"


def test_a_client_of_another_org_citing_a_ticket_gets_a_new_ticket_of_their_own_org(
        inbound: InboundBuilder, opened: Opened, session: Session) -> None:
    """Bob (Base Co) has Client Co's acknowledgement and subject: both are ignored, as if
    absent, and nothing of Client Co's ticket is touched."""
    ctx = inbound(make_email(sender="bob@base.example", subject=opened.acknowledgement.subject,
                             in_reply_to=opened.acknowledgement.message_id,
                             body="Please add me."),
                  through="locate_ticket")
    checks.decide_trust.run(ctx)
    assert ctx.verdict == Verdict("new_ticket", org_slug="baseco")
    assert ctx.ticket is None and ctx.matched_by is None
    assert ctx.org is not None and ctx.org.slug == "baseco"

    client.record.run(ctx)
    assert ctx.created_ticket and ctx.ticket is not None
    assert ctx.ticket.id != opened.ticket.id and ctx.ticket.org.slug == "baseco"
    assert session.scalar(select(func.count(Message.id)).where(
        Message.ticket_id == opened.ticket.id)) == 1


def test_a_client_listed_on_another_orgs_ticket_may_reply_to_it(
        inbound: InboundBuilder, new_ticket: Any) -> None:
    ticket = new_ticket("clientco", cc=["bob@base.example"])
    ctx = inbound(make_email(sender="bob@base.example", subject=f"Re: [PD-{ticket.id}] x"),
                  through="locate_ticket")
    checks.decide_trust.run(ctx)
    assert ctx.verdict is not None and ctx.verdict.kind == "client_content"
    assert ctx.ticket is not None and ctx.ticket.id == ticket.id
    assert ctx.matched_by == "subject"


def test_a_staff_token_gives_a_client_nothing(
        inbound: InboundBuilder, opened: Opened, services: Services) -> None:
    """A client who got hold of the notification's id or the reply address: a new
    ticket of the client's own org, never the staff member's authority."""
    ctx = inbound(make_email(sender="carol@client.example",
                             to=services.reply_address(opened.ticket.id),
                             in_reply_to=opened.notification.message_id,
                             body="#status closed"),
                  envelope_from="carol@client.example", through="locate_ticket")
    assert ctx.references is not None
    assert ctx.references.staff_token_ticket == opened.ticket.id
    checks.decide_trust.run(ctx)
    assert ctx.verdict == Verdict("new_ticket", org_slug="clientco")
    assert ctx.ticket is None


def test_an_unsigned_email_from_an_org_that_requires_dkim_is_quarantined(
        inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="sam@strict.example"), through="locate_ticket")
    outcome = outcome_of(checks.decide_trust, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "unauthenticated"
    assert "strictco requires DKIM" in outcome.detail
    assert isinstance(outcome.data, Verdict) and outcome.data.notify_staff is None


def test_a_released_email_from_a_staff_address_is_client_content_from_a_contact(
        inbound: InboundBuilder, opened: Opened, services: Services) -> None:
    """Release is not a pardon: the staff From, the staff token and the commands count
    for nothing; it is client content of the release org, from a contact."""
    ctx = inbound(make_email(sender=STAFF, subject=opened.acknowledgement.subject,
                             to=services.reply_address(opened.ticket.id),
                             in_reply_to=opened.notification.message_id,
                             body="#status closed"),
                  envelope_from=STAFF, authorised=True, release_org="clientco",
                  through="locate_ticket")
    assert ctx.from_staff
    checks.decide_trust.run(ctx)
    assert ctx.verdict is not None and ctx.verdict.kind == "client_content"
    assert not ctx.verdict.staff_authority
    assert ctx.matched_by == "subject"
    assert ctx.ticket is not None and ctx.ticket.id == opened.ticket.id
    assert ctx.sender is not None
    assert (ctx.sender.kind, ctx.sender.email, ctx.sender.org_slug) == (
        "contact", STAFF, "clientco")
    assert ctx.from_client and not ctx.from_staff
    assert ctx.org is not None and ctx.org.slug == "clientco"


def test_a_released_email_from_a_staff_address_with_no_org_stays_quarantined(
        inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender=STAFF), envelope_from=STAFF, authorised=True,
                  through="locate_ticket")
    outcome = outcome_of(checks.decide_trust, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "unknown_sender"


# --- checks write nothing ----------------------------------------------------------------

Scenario = tuple[Any, str | None, tuple[str, str] | None]

# name -> (the email, given the first ticket's context; envelope sender; how the checks end)
SCENARIOS: dict[str, Scenario] = {
    "new client email": (lambda first: make_email(), None, None),
    "client reply": (lambda first: make_email(in_reply_to=ours(first.ticket.id)), None, None),
    "staff reply": (lambda first: make_email(
        sender=STAFF, to=make_reply_address(
            SECRET, "support@desk.example", "PD", first.ticket.id)), STAFF, None),
    "forged staff reply": (lambda first: make_email(
        sender=STAFF, to=make_reply_address(
            SECRET, "support@desk.example", "PD", first.ticket.id)),
        "attacker@evil.example", ("quarantined", "unauthenticated")),
    "staff email citing a client id": (lambda first: make_email(
        sender=STAFF, in_reply_to=ours(first.ticket.id)), STAFF,
        ("quarantined", "unauthenticated")),
    "client citing another org's ticket": (lambda first: make_email(
        subject=f"[PD-{first.ticket.id}] me too"), None, None),
    "unknown sender": (lambda first: make_email(sender="mallory@elsewhere.example"), None,
                       ("quarantined", "unknown_sender")),
    "bounce": (lambda first: (FIXTURES / "dsn.eml").read_bytes(), "",
               ("quarantined", "bounce")),
    "balance request": (lambda first: make_email(subject="balance"), None,
                        ("processed", "balance_request")),
    "duplicate": (lambda first: make_email(message_id=first.email.message_id,
                                           headers={"X-Again": "1"}), None,
                  ("duplicate", "message_id")),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_checks_write_nothing(inbound: InboundBuilder, session: Session,
                              statements: list[str], scenario: str) -> None:
    first = inbound(make_email(sender="bob@base.example"), through="record")
    mail, envelope, ends = SCENARIOS[scenario]
    ctx = inbound(mail(first), envelope_from=envelope)
    session.commit()                   # as in process: the checks begin a transaction
    statements.clear()

    with read_only(session):
        outcome = run_steps(CHECKS, ctx)
        assert not session.new and not session.dirty and not session.deleted

    assert (None if outcome is None else (outcome.status, outcome.reason)) == ends
    writes = [s for s in statements
              if s.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert statements, "the checks read nothing: the recorder is not listening"
