"""Checks: the first phase. Each reads the email and the desk's state, annotates the
context, and may end processing with an outcome (``Quarantine``, ``Duplicate``,
``Handled``). Checks write nothing: they run in a read-only transaction, and what an
outcome must change (a bounce marked, a notice to an unknown sender) is done by the
runner's reaction to it, in the record transaction (``process``)."""

from __future__ import annotations

from sqlalchemy import select

from postdesk.mail.authentication import authenticate
from postdesk.mail.classify import classify
from postdesk.mail.parse import UnparseableEmail, parse_email
from postdesk.mail.tokens import is_our_message_id
from postdesk.storage.directory import org_by_slug
from postdesk.storage.models import Message
from postdesk.workflow.desk.ticket_lookup import find_ticket
from postdesk.workflow.desk.tickets import inbound_dedupe_key
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Duplicate, Handled, Quarantine, step
from postdesk.workflow.rules.senders import SenderIdentity, identify_sender


@step
def parse(ctx: Inbound) -> None:
    try:
        ctx.parsed = parse_email(ctx.raw_bytes)
    except UnparseableEmail as exc:
        raise Quarantine("unparseable", str(exc)) from None


@step
def classify_mail(ctx: Inbound) -> None:
    mail = ctx.email
    if mail.message_id and is_our_message_id(ctx.services.secret, mail.message_id):
        raise Quarantine("loop", f"our own email {mail.message_id} came back")
    verdict = classify(mail, ctx.raw.envelope_from)
    if verdict.kind == "bounce":
        raise Quarantine("bounce", f"{verdict.reason}: {', '.join(verdict.bounced_addresses)}",
                         data=verdict)
    if verdict.kind == "auto_reply":
        ctx.auto_reply = True
        ctx.auto_reason = verdict.reason


@step
def identify(ctx: Inbound) -> None:
    ctx.sender = identify_sender(ctx.email.from_addr, ctx.config)
    if ctx.sender.kind == "unknown" and ctx.raw.authorised:
        ctx.sender = released_sender(ctx)
    if ctx.sender.kind == "unknown":
        if ctx.auto_reply:
            raise Quarantine("auto_reply", f"{ctx.auto_reason} from an unknown sender")
        raise Quarantine("unknown_sender", f"{ctx.email.from_addr or '(no From)'} is not "
                         "staff, a listed contact or in an org's domains")
    if ctx.sender.org_slug:
        ctx.org = org_by_slug(ctx.session, ctx.sender.org_slug)


def released_sender(ctx: Inbound) -> SenderIdentity:
    """An operator released this message from quarantine: treat its sender as a contact
    of the org chosen on release, else of the catch-all org, if there is one."""
    assert ctx.sender is not None
    slug = ctx.raw.release_org or next(
        (o.slug for o in ctx.config.orgs if "*" in o.domains), None)
    if slug is None:
        return ctx.sender
    return SenderIdentity(kind="contact", email=ctx.sender.email, org_slug=slug)


@step
def verify_sender(ctx: Inbound) -> None:
    """Orgs with ``require_dkim`` (and staff, with ``staff_require_dkim``) must prove their
    From domain; a released message was vouched for by an operator."""
    sender = ctx.sender
    assert sender is not None
    if ctx.raw.authorised:
        return
    required = False
    if sender.kind == "contact" and sender.org_slug:
        org = ctx.config.org(sender.org_slug)
        required = bool(org and org.require_dkim)
    elif sender.kind == "staff":
        required = ctx.config.desk.staff_require_dkim
    if not required:
        return
    verdict = authenticate(ctx.raw_bytes, ctx.email.from_addr,
                           ctx.email.header_all("Authentication-Results"),
                           ctx.config.desk.trusted_authserv_ids, ctx.services.dkim_dns)
    ctx.sender_verified = verdict.passed
    if not verdict.passed and sender.kind == "contact":
        raise Quarantine("unauthenticated", verdict.how)


@step
def deduplicate(ctx: Inbound) -> None:
    """The same email by another door (SMTP and IMAP), or re-sent with new bytes."""
    key = inbound_dedupe_key(ctx.email, ctx.raw)
    existing = ctx.session.scalar(select(Message.ticket_id).where(Message.dedupe_key == key))
    if existing is not None:
        raise Duplicate("message_id", f"already on ticket {existing} as {key}", data=existing)


@step
def balance_request(ctx: Inbound) -> None:
    """A client contact who emails the subject ``balance`` gets this month's allowance
    (answered by the runner's reaction); no ticket is made."""
    if not ctx.from_client or ctx.org is None:
        return
    if (ctx.email.subject or "").strip().lower() not in ("balance", "re: balance"):
        return
    if ctx.auto_reply or not ctx.raw.notify:
        raise Handled("balance_request", "automatic or imported: not answered")
    raise Handled("balance_request", data="answer")


@step
def locate_ticket(ctx: Inbound) -> None:
    mail = ctx.email
    match = find_ticket(
        ctx.session, secret=ctx.services.secret, prefix=ctx.config.desk.ticket_prefix,
        in_reply_to=mail.in_reply_to, references=mail.references,
        recipients=[*ctx.raw.envelope_to, *mail.to, *mail.cc], subject=mail.subject,
        sender=mail.from_addr or "", sender_org_id=ctx.org.id if ctx.org else None,
        sender_is_staff=ctx.from_staff)
    if match:
        ctx.ticket, ctx.matched_by = match.ticket, match.how


@step
def staff_trust(ctx: Inbound) -> None:
    """A staff email that names a ticket must prove it is that staff member answering
    about that ticket before anything is recorded or relayed."""
    if not ctx.from_staff or ctx.ticket is None or ctx.auto_reply:
        return
    trusted, why = staff_reply_trusted(ctx)
    if not trusted:
        raise Quarantine("unauthenticated", f"staff reply not trusted: {why}")


def staff_reply_trusted(ctx: Inbound) -> tuple[bool, str]:
    """Is this staff email really from that staff member, about this ticket?"""
    mail = ctx.email
    if not ctx.sender_verified:
        return False, "staff mail failed DKIM/DMARC verification"
    envelope = (ctx.raw.envelope_from or mail.header("Return-Path") or "").strip("<> ").lower()
    if envelope and envelope.rsplit("@", 1)[-1] != (mail.from_addr or "").rsplit("@", 1)[-1]:
        return False, f"envelope sender {envelope} does not match the staff From address"
    if ctx.matched_by not in ("our_message_id", "reply_address"):
        return False, "not a reply to a signed postdesk email (no valid ticket token)"
    return True, ""
