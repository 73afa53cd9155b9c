"""Handlers: the record phase for a client's email. They run in one short transaction:
open the ticket or add the email to it, then priority, assignment, SLA clocks and
sign-off. They queue no email (the notify steps do, from what was recorded)."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from postdesk.storage.directory import staff_by_email, staff_by_id
from postdesk.storage.models import Contact, Staff
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.recent import (
    HOUR,
    tickets_opened_between,
    tickets_opened_since,
)
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.desk.tickets import open_ticket, store_message
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Quarantine, step
from postdesk.workflow.rules.approval import DEFAULT_APPROVALS, is_approval
from postdesk.workflow.rules.priority import (
    DEFAULT_KEYWORD_RULES,
    KeywordRule,
    PriorityDecision,
    initial_priority,
    raise_only,
)
from postdesk.workflow.rules.rota import on_rota
from postdesk.workflow.rules.zones import desk_zone


@step
def record(ctx: Inbound) -> None:
    """A client's email: open a ticket or add the email to its ticket."""
    sender = ctx.sender
    assert sender is not None
    if ctx.ticket is None:
        if ctx.auto_reply:
            raise Quarantine("auto_reply", f"{ctx.auto_reason}, not on any ticket")
        if ctx.org is None:
            raise Quarantine("unknown_sender", "no org to file this email under")
        mail = ctx.email
        # Imported history keeps its own time line.
        opened = mail.date if (not ctx.raw.notify and mail.date) else ctx.now
        # Its priority and assignee are decided first (by the rules the next two steps
        # name) and written with it: one INSERT, not an INSERT and an UPDATE.
        decision = _opening_priority(ctx)
        staff = _rota_staff(ctx)
        ctx.ticket = open_ticket(ctx.session, prefix=ctx.config.desk.ticket_prefix, mail=mail,
                                 org=ctx.org, requester=sender.email, opened_at=opened,
                                 now=ctx.now,
                                 priority=decision.priority if decision else "P3",
                                 assignee_id=staff.id if staff else None)
        ctx.created_ticket = True
        if decision is not None:
            ctx.priority_reason = decision.reason
            ctx.became_p1 = decision.priority == "P1"
    ctx.message = store_message(
        ctx.session, ctx.services.blobs, raw=ctx.raw, mail=ctx.email, ticket=ctx.ticket,
        kind="system" if ctx.auto_reply else "public", direction="in",
        text=ctx.visible_text, max_attachment_bytes=ctx.config.desk.max_attachment_bytes,
        now=ctx.now)
    if not ctx.created_ticket:   # (a new ticket was written with updated_at = now)
        ctx.ticket.updated_at = ctx.now
    add_event(ctx.session, ctx.ticket, "message_received", ctx.now, sender.email,
              message_id=ctx.email.message_id, matched_by=ctx.matched_by,
              message_kind=ctx.message.kind)


def _keyword_rules(ctx: Inbound) -> list[KeywordRule]:
    rules = ctx.config.priority_rules
    if rules is None:
        return list(DEFAULT_KEYWORD_RULES)
    return [KeywordRule(r.phrase, r.priority) for r in rules]


def _escalation_keyword(ctx: Inbound) -> str | None:
    """Only an authenticated, authorised contact can pull the escalation cord."""
    if not ctx.from_client or not ctx.sender_verified or ctx.org is None:
        return None
    org = ctx.config.org(ctx.org.slug)
    return org.escalation_keyword if org else None


def _opening_priority(ctx: Inbound) -> PriorityDecision | None:
    """The priority a client's new ticket opens with (None: not a client's own email,
    so no rule applies). Its new text is the visible text ``record`` stores with it."""
    if not ctx.from_client or ctx.auto_reply:
        return None
    return initial_priority(ctx.email.subject, ctx.visible_text,
                            escalation_keyword=_escalation_keyword(ctx),
                            keyword_rules=_keyword_rules(ctx))


def _rota_staff(ctx: Inbound) -> Staff | None:
    """Who is on rota this week (in the desk's zone), if anyone."""
    email = on_rota(ctx.config.rota, ctx.now.astimezone(desk_zone(ctx.config)).date())
    return staff_by_email(ctx.session, email) if email else None


@step
def prioritise(ctx: Inbound) -> None:
    """New ticket: priority from the escalation keyword and keyword rules (written when
    ``record`` opened it). Later client email: rules may raise the priority, never lower
    it."""
    if not ctx.from_client or ctx.auto_reply:
        return
    ticket = ctx.ticket
    assert ticket is not None
    if ctx.created_ticket:
        add_event(ctx.session, ticket, "priority_set", ctx.now, "rules",
                  priority=ticket.priority, reason=ctx.priority_reason)
        return
    decision = initial_priority(None, ctx.new_text, escalation_keyword=_escalation_keyword(ctx),
                                keyword_rules=_keyword_rules(ctx))
    old = ticket.priority
    new = raise_only(old, decision.priority)
    if new != old:
        ticket.priority = new
        ctx.services.clocks(ctx.session).reprioritise(ticket, ctx.now)
        add_event(ctx.session, ticket, "priority_changed", ctx.now, "rules", old=old, new=new,
                  reason=decision.reason)
        ctx.priority_reason = decision.reason
        ctx.became_p1 = new == "P1"


@step
def assign(ctx: Inbound) -> None:
    """A new ticket goes to the staff member on rota this week (in the desk's zone);
    ``record`` wrote the assignee with the ticket, this step records why."""
    ticket = ctx.ticket
    if not ctx.created_ticket or ticket is None or ticket.assignee_id is None:
        return
    staff = staff_by_id(ctx.session, ticket.assignee_id)
    add_event(ctx.session, ticket, "assigned", ctx.now, "rota",
              assignee=staff.email if staff else "")


@step
def start_or_resume_clocks(ctx: Inbound) -> None:
    ticket = ctx.ticket
    assert ticket is not None
    keeper = ctx.services.clocks(ctx.session)
    if ctx.created_ticket:
        ctx.new_ticket_clocks = keeper.start_ticket(ticket, ticket.created_at, fresh=True)
        return
    if not ctx.from_client or ctx.auto_reply:
        return   # an out-of-office reply neither reopens a ticket nor moves a clock
    if ticket.status in ("pending", "resolved", "closed"):
        # The client answered: clocks resume; a resolved ticket reopens.
        set_status(keeper, ticket, "open", ctx.now, ctx.sender.email if ctx.sender else "")


_LOCK_CONTACT = select(Contact.id).where(Contact.email == bindparam("email")).with_for_update()


@step
def flood_limit(ctx: Inbound) -> None:
    """More than ``flood_tickets_per_hour`` new tickets from one sender: quarantine (the
    runner rolls back what this email recorded).

    Last of the handlers, so the sender's contact row is locked only from here to the
    commit: concurrent workers creating tickets for the same sender count in turn (the
    count includes this email's own ticket and every one committed before the lock was
    granted), and the limit is exact; nothing slow happens while the lock is held."""
    ticket = ctx.ticket
    if not ctx.created_ticket or ticket is None or ctx.org is None:
        return
    requester = ticket.requester_email
    # Plain statements on the session's connection: nothing pending needs writing first
    # (the ticket was written when it was opened, and only tickets are counted).
    connection = ctx.session.connection()
    if connection.dialect.name != "sqlite":
        # (On SQLite the transaction holds the database's write lock already.)
        connection.execute(_LOCK_CONTACT, {"email": requester.lower()})
    # The hour before the ticket opened: for live mail that is now; for imported
    # history it is the email's own Date, so old mail is counted against its own hour
    # (not against the minute the import ran) and mail dated later does not count.
    if ticket.created_at < ctx.now:
        recent = tickets_opened_between(ctx.session, requester, ticket.created_at - HOUR,
                                        ticket.created_at)
    else:
        recent = tickets_opened_since(ctx.session, requester, ctx.now - HOUR)
    if recent > ctx.config.desk.flood_tickets_per_hour:
        raise Quarantine("flood", f"{requester} opened {recent - 1} tickets in the last hour")


@step
def sign_off(ctx: Inbound) -> None:
    """While awaiting sign-off, an approval from a contact with ``can_approve`` resolves
    the ticket; from anyone else it is recorded (and answered by a notify step)."""
    ticket = ctx.ticket
    if ticket is None or ticket.status != "awaiting_signoff" or not ctx.from_client:
        return
    phrases = tuple(ctx.config.desk.approval_phrases or DEFAULT_APPROVALS)
    if ctx.auto_reply or not is_approval(ctx.new_text, phrases):
        return
    sender = ctx.sender
    assert sender is not None
    if sender.can_approve and ctx.sender_verified:
        set_status(ctx.services.clocks(ctx.session), ticket, "resolved", ctx.now, sender.email)
        add_event(ctx.session, ticket, "signed_off", ctx.now, sender.email)
        return
    add_event(ctx.session, ticket, "signoff_refused", ctx.now, sender.email,
              reason="not an approver")
    ctx.signoff_refused = True
