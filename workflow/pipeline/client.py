"""Pipeline steps for a client's email once it is on a ticket: priority, assignment,
SLA clocks, status changes, sign-off, the acknowledgement and the P1 page."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from postdesk.storage.directory import staff_by_email
from postdesk.workflow.desk.events import ack_subject, add_event, ticket_ref
from postdesk.workflow.desk.outbox import queue_email
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.pipeline.runner import step
from postdesk.workflow.rules.priority import (
    DEFAULT_KEYWORD_RULES,
    KeywordRule,
    initial_priority,
    raise_only,
)
from postdesk.workflow.rules.rota import on_rota

if TYPE_CHECKING:
    from postdesk.workflow.pipeline.process import Inbound

DEFAULT_APPROVALS = ("approved", "signed off", "sign off", "ok to deploy", "okay to deploy",
                     "go ahead and deploy", "happy to sign off")


def _is_client(ctx: Inbound) -> bool:
    return ctx.sender is not None and ctx.sender.kind == "contact"


def _new_text(ctx: Inbound) -> str:
    return ctx.message.stripped_text if ctx.message is not None else (ctx.email.text or "")


def _keyword_rules(ctx: Inbound) -> list[KeywordRule]:
    rules = ctx.config.priority_rules
    if rules is None:
        return list(DEFAULT_KEYWORD_RULES)
    return [KeywordRule(r.phrase, r.priority) for r in rules]


def _escalation_keyword(ctx: Inbound) -> str | None:
    """Only an authenticated, authorised contact can pull the escalation cord."""
    if not _is_client(ctx) or not ctx.sender_verified or ctx.org is None:
        return None
    org = ctx.config.org(ctx.org.slug)
    return org.escalation_keyword if org else None


def _calendar_tz(ctx: Inbound) -> ZoneInfo:
    assert ctx.ticket is not None
    plan = ctx.config.plans[ctx.ticket.org.plan]
    return ZoneInfo(ctx.config.calendars[plan.calendar].timezone)


@step
def prioritise(ctx: Inbound) -> None:
    """New ticket: priority from the escalation keyword and keyword rules. Later client
    email: rules may raise the priority, never lower it."""
    if not _is_client(ctx) or ctx.auto_reply:
        return
    ticket = ctx.ticket
    assert ticket is not None
    decision = initial_priority(ctx.email.subject if ctx.created_ticket else None,
                                _new_text(ctx), escalation_keyword=_escalation_keyword(ctx),
                                keyword_rules=_keyword_rules(ctx))
    old = ticket.priority
    new = decision.priority if ctx.created_ticket else raise_only(old, decision.priority)
    if ctx.created_ticket:
        ticket.priority = new
        add_event(ctx.session, ticket, "priority_set", ctx.now, "rules", priority=new,
                  reason=decision.reason)
        ctx.priority_reason = decision.reason
        ctx.became_p1 = new == "P1"
    elif new != old:
        ticket.priority = new
        ctx.app.keeper(ctx.session).reprioritise(ticket, ctx.now)
        add_event(ctx.session, ticket, "priority_changed", ctx.now, "rules", old=old, new=new,
                  reason=decision.reason)
        ctx.priority_reason = decision.reason
        ctx.became_p1 = new == "P1"


@step
def assign(ctx: Inbound) -> None:
    """A new ticket goes to the staff member on rota this week (in the plan's zone)."""
    ticket = ctx.ticket
    if not ctx.created_ticket or ticket is None or ticket.assignee_id is not None:
        return
    email = on_rota(ctx.config.rota, ctx.now.astimezone(_calendar_tz(ctx)).date())
    staff = staff_by_email(ctx.session, email) if email else None
    if staff is not None:
        ticket.assignee_id = staff.id
        add_event(ctx.session, ticket, "assigned", ctx.now, "rota", assignee=staff.email)


@step
def start_or_resume_clocks(ctx: Inbound) -> None:
    ticket = ctx.ticket
    assert ticket is not None
    keeper = ctx.app.keeper(ctx.session)
    if ctx.created_ticket:
        keeper.start_ticket(ticket, ticket.created_at)
        return
    if not _is_client(ctx) or ctx.auto_reply:
        return   # an out-of-office reply neither reopens a ticket nor moves a clock
    if ticket.status in ("pending", "resolved", "closed"):
        # The client answered: clocks resume; a resolved ticket reopens.
        set_status(keeper, ticket, "open", ctx.now, ctx.sender.email if ctx.sender else "")


@lru_cache(maxsize=16)
def _approval_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(r"\s+".join(map(re.escape, p.split())) for p in phrases)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I)


def is_approval(text: str, phrases: tuple[str, ...] = DEFAULT_APPROVALS) -> bool:
    """An approval in the new text, not negated on the same line ("not approved")."""
    pattern = _approval_pattern(phrases)
    for line in text.splitlines():
        match = pattern.search(line)
        if match and not re.search(r"\b(not|n't|no)\s*$", line[:match.start()], re.I):
            return True
    return False


@step
def sign_off(ctx: Inbound) -> None:
    """While awaiting sign-off, an approval from a contact with ``can_approve`` resolves
    the ticket; from anyone else it is recorded and answered with who can approve."""
    ticket = ctx.ticket
    if ticket is None or ticket.status != "awaiting_signoff" or not _is_client(ctx):
        return
    phrases = tuple(ctx.config.desk.approval_phrases or DEFAULT_APPROVALS)
    if ctx.auto_reply or not is_approval(_new_text(ctx), phrases):
        return
    sender = ctx.sender
    assert sender is not None
    keeper = ctx.app.keeper(ctx.session)
    if sender.can_approve and ctx.sender_verified:
        set_status(keeper, ticket, "resolved", ctx.now, sender.email)
        add_event(ctx.session, ticket, "signed_off", ctx.now, sender.email)
        return
    add_event(ctx.session, ticket, "signoff_refused", ctx.now, sender.email,
              reason="not an approver")
    approvers = [c.email for c in ctx.config.org(ticket.org.slug).contacts if c.can_approve]
    prefix = ctx.config.desk.ticket_prefix
    row = queue_email(
        ctx.session, ctx.app, dedupe_key=f"signoff-refused:{ctx.raw.id}",
        template="signoff_not_approver", to=[sender.email],
        subject=ack_subject(prefix, ticket), ticket=ticket,
        in_reply_to=ctx.email.message_id, references=[*ctx.email.references],
        context={"ref": ticket_ref(prefix, ticket.id), "approvers": approvers},
        now=ctx.now)
    if row is not None:
        ctx.outbox_ids.append(row.id)


def _first_response_due(ctx: Inbound) -> str | None:
    assert ctx.ticket is not None
    clocks = ctx.app.keeper(ctx.session).running(ctx.ticket, "first_response")
    if not clocks:
        return None
    tz = _calendar_tz(ctx)
    return clocks[0].due_at.astimezone(tz).strftime("%a %d %b %Y %H:%M %Z")


@step
def acknowledge(ctx: Inbound) -> None:
    if not (ctx.created_ticket and ctx.raw.notify and _is_client(ctx)) or ctx.auto_reply:
        return
    mail, ticket = ctx.email, ctx.ticket
    assert ticket is not None and ctx.sender is not None
    prefix = ctx.config.desk.ticket_prefix
    row = queue_email(
        ctx.session, ctx.app, dedupe_key=f"ack:{ticket.id}", template="acknowledgement",
        to=[ctx.sender.email], subject=ack_subject(prefix, ticket), ticket=ticket,
        in_reply_to=mail.message_id, references=[*mail.references],
        context={"ref": ticket_ref(prefix, ticket.id), "requester_name": mail.from_name,
                 "first_response_due": _first_response_due(ctx)},
        now=ctx.now)
    if row is not None:
        ctx.outbox_ids.append(row.id)


@step
def page_p1(ctx: Inbound) -> None:
    """A ticket that became P1 pages the on-rota person and every lead at once."""
    ticket = ctx.ticket
    if ticket is None or not ctx.became_p1 or not ctx.raw.notify:
        return
    prefix = ctx.config.desk.ticket_prefix
    rota = on_rota(ctx.config.rota, ctx.now.astimezone(_calendar_tz(ctx)).date())
    people = list(dict.fromkeys([p for p in [rota, *(s.email for s in ctx.config.leads())]
                                 if p]))
    from postdesk.mail.tokens import make_reply_address

    reply_to = make_reply_address(ctx.app.secret, ctx.config.desk.support_addresses[0],
                                  prefix, ticket.id)
    for email in people:
        row = queue_email(
            ctx.session, ctx.app, dedupe_key=f"p1-page:{ticket.id}:{email}",
            on_ticket=False, template="p1_page", to=[email],
            subject=f"[{ticket_ref(prefix, ticket.id)}] P1 PAGE: {ticket.subject}",
            ticket=ticket, reply_to=reply_to,
            context={"ref": ticket_ref(prefix, ticket.id), "reason": ctx.priority_reason,
                     "first_response_due": _first_response_due(ctx),
                     "text": _new_text(ctx)},
            now=ctx.now)
        if row is not None:
            ctx.outbox_ids.append(row.id)
            add_event(ctx.session, ticket, "p1_paged", ctx.now, "system", to=email)
