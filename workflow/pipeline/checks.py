"""Checks: the first phase. Each reads the email and the desk's state, annotates the
context, and may end processing with an outcome (``Quarantine``, ``Duplicate``,
``Handled``). Checks write nothing: they run in a read-only transaction, and what an
outcome must change (a bounce marked, a notice to an unknown sender) is done by the
runner's reaction to it, in the record transaction (``process``)."""

from __future__ import annotations

from postdesk.mail.authentication import authenticate
from postdesk.mail.classify import classify
from postdesk.mail.parse import UnparseableEmail, parse_email
from postdesk.mail.tokens import is_our_message_id
from postdesk.storage.directory import org_by_slug
from postdesk.storage.models import Ticket
from postdesk.workflow.desk.merge import follow_merges
from postdesk.workflow.desk.ticket_lookup import gather_references
from postdesk.workflow.desk.tickets import inbound_dedupe_key, stored_on
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Duplicate, Handled, Quarantine, step
from postdesk.workflow.rules import commands as cmd
from postdesk.workflow.rules.queue import queue_request
from postdesk.workflow.rules.senders import SenderIdentity, identify_sender
from postdesk.workflow.rules.trust import Evidence, decide
from postdesk.workflow.rules.zones import desk_zone


@step
def parse(ctx: Inbound) -> None:
    try:
        ctx.parsed = parse_email(ctx.raw_bytes,
                                 max_attachment_bytes=ctx.config.desk.max_attachment_bytes)
    except UnparseableEmail as exc:
        raise Quarantine("unparseable", str(exc)) from None


@step
def classify_mail(ctx: Inbound) -> None:
    mail = ctx.email
    if mail.message_id and is_our_message_id(ctx.services.secret, mail.message_id):
        raise Quarantine("loop", f"our own email {mail.message_id} came back")
    ahead = ctx.classified_without_envelope
    verdict = (ahead if ahead is not None and ctx.raw.envelope_from is None
               else classify(mail, ctx.raw.envelope_from))
    if verdict.kind == "bounce":
        raise Quarantine("bounce", f"{verdict.reason}: {', '.join(verdict.bounced_addresses)}",
                         data=verdict)
    if verdict.kind == "auto_reply" and not ctx.raw.authorised:
        # A released auto-reply is not one any more: the operator said it is a client's
        # email. It is then client content like any release (the trust decision still
        # gives released mail no staff authority).
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
def authenticate_sender(ctx: Inbound) -> None:
    """The DKIM / trusted Authentication-Results verdict, where it can matter: for staff
    mail always (staff authority may need it), for an org's contacts when the org requires
    it. ``None`` means nothing to verify with (no signature, no trusted header) or not
    needed; the trust decision says what that allows. A released message is not
    checked again."""
    sender = ctx.sender
    assert sender is not None
    if ctx.raw.authorised:
        return
    if sender.kind == "contact" and sender.org_slug:
        org = ctx.config.org(sender.org_slug)
        if not (org and org.require_dkim):
            return
    elif sender.kind == "staff":
        signed = b"dkim-signature:" in ctx.raw_bytes[:65536].lower()
        trusted = bool(ctx.config.desk.trusted_authserv_ids) and bool(
            ctx.email.header_all("Authentication-Results"))
        if not (signed or trusted or ctx.config.desk.staff_require_dkim):
            return
    else:
        return
    verdict = authenticate(ctx.raw_bytes, ctx.email.from_addr,
                           ctx.email.header_all("Authentication-Results"),
                           ctx.config.desk.trusted_authserv_ids, ctx.services.dkim_dns)
    ctx.dkim, ctx.dkim_how = verdict.passed, verdict.how
    ctx.sender_verified = verdict.passed


@step
def deduplicate(ctx: Inbound) -> None:
    """The same email by another door (SMTP and IMAP), or re-sent with new bytes."""
    key = inbound_dedupe_key(ctx.email, ctx.raw)
    existing = stored_on(ctx.session, key)
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
    """Gather what the email's references point at; which of them the sender may use is
    the trust decision's, next."""
    mail = ctx.email
    ctx.references = gather_references(
        ctx.session, secret=ctx.services.secret, prefix=ctx.config.desk.ticket_prefix,
        in_reply_to=mail.in_reply_to, references=mail.references,
        recipients=[*ctx.raw.envelope_to, *mail.to, *mail.cc], subject=mail.subject)


@step
def decide_trust(ctx: Inbound) -> None:
    """THE trust decision (``workflow.rules.trust.decide``), made once, before anything
    acts: every later step works within its verdict."""
    sender, refs, mail = ctx.sender, ctx.references, ctx.email
    assert sender is not None and refs is not None
    asks_on_behalf = False
    asks_read_only = sender.kind == "staff" and queue_request(mail.subject) is not None
    if sender.kind == "staff":
        parse = cmd.parse_commands(ctx.visible_text, now=ctx.now, tz=desk_zone(ctx.config))
        asks_on_behalf = any(isinstance(c, cmd.TICKET_CREATION_COMMANDS)
                             for c in parse.commands)
    org_cfg = ctx.config.org(sender.org_slug) if sender.org_slug else None
    verdict = decide(Evidence(
        sender=sender,
        envelope_from=ctx.raw.envelope_from or mail.header("Return-Path") or "",
        staff_token_ticket=refs.staff_token_ticket, client_refs=refs.client_refs,
        dkim=ctx.dkim, staff_require_dkim=ctx.config.desk.staff_require_dkim,
        org_require_dkim=bool(org_cfg and org_cfg.require_dkim),
        staff_unverified_on_behalf=ctx.config.desk.staff_unverified_on_behalf,
        released=ctx.raw.authorised, released_to_org=ctx.raw.release_org,
        asks_on_behalf=asks_on_behalf, asks_read_only=asks_read_only))
    ctx.verdict = verdict
    if verdict.kind == "quarantine":
        if ctx.auto_reply:
            # An out-of-office from staff (null envelope, no token): not a forgery to
            # report, and never relayed.
            raise Quarantine("auto_reply", f"{ctx.auto_reason}: {verdict.detail}")
        raise Quarantine(verdict.reason or "unauthenticated", verdict.detail, data=verdict)
    if verdict.kind == "staff_reply":
        ctx.ticket = _current(ctx, verdict.ticket_id)
        ctx.matched_by = refs.staff_token_how
        return
    if verdict.kind == "staff_action":
        if verdict.action == "read_only":
            _answer_queue_request(ctx)
        return
    # Client content (or a released email, which is client content whatever its From):
    # from here on the sender is a contact of the verdict's org.
    if sender.kind != "contact" or sender.org_slug != verdict.org_slug:
        sender = SenderIdentity(kind="contact", email=sender.email,
                                org_slug=verdict.org_slug, name=sender.name)
        ctx.sender = sender
    ctx.org = org_by_slug(ctx.session, sender.org_slug) if sender.org_slug else None
    if verdict.kind == "client_content":
        ctx.ticket = _current(ctx, verdict.ticket_id)
        ctx.matched_by = verdict.matched_by


def _current(ctx: Inbound, ticket_id: int | None) -> Ticket | None:
    """The ticket the verdict names, or the one it was merged into (of the same org:
    ``desk.merge`` merges only within an org, and ``follow_merges`` checks it again)."""
    ticket = ctx.session.get(Ticket, ticket_id)
    return follow_merges(ctx.session, ticket) if ticket is not None else None


def _answer_queue_request(ctx: Inbound) -> None:
    """A trusted staff member asked for their queue: answered by the runner's reaction
    (``notify.answer_queue``) to the configured address; no ticket is made or changed."""
    if ctx.auto_reply or not ctx.raw.notify:
        raise Handled("queue_request", "automatic or imported: not answered")
    raise Handled("queue_request", data=queue_request(ctx.email.subject))
