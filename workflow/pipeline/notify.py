"""Notify: the last phase. From what was recorded, decide who hears about it and queue
those emails as drafts (cheap: no template, no MIME); they are rendered and composed after
the transaction commits, with no lock held (``desk.outbox``).

Also here: the runner's reactions to outcomes — the notice to an unknown sender, the
bookkeeping of a bounce, the answer to ``balance``, the staff member's command errors."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, func, select

from postdesk.mail.thread_index import outlook_thread_index
from postdesk.storage.directory import staff_by_id
from postdesk.storage.models import Message, Outbox, Ticket
from postdesk.workflow.desk.allowance import org_month_balance, per_ticket_usage
from postdesk.workflow.desk.attachments import draft_file, facts, message_attachments
from postdesk.workflow.desk.bounces import record_bounce
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.queue import queue_lines
from postdesk.workflow.desk.staff_thread import staff_thread_root
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Outcome, step
from postdesk.workflow.rules.attachments import files_for_notification, human_size
from postdesk.workflow.rules.due_text import due_phrase, local_time
from postdesk.workflow.rules.hours import describe_hours
from postdesk.workflow.rules.refs import MAX_SUBJECT, ack_subject, ticket_ref
from postdesk.workflow.rules.rota import on_rota
from postdesk.workflow.rules.zones import desk_zone, org_zone, staff_zone


def _first_response_due(ctx: Inbound) -> str | None:
    assert ctx.ticket is not None
    clocks = ctx.running_clocks("first_response")
    if not clocks:
        return None
    tz = org_zone(ctx.config, ctx.ticket.org.slug, ctx.ticket.org.plan)
    return clocks[0].due_at.astimezone(tz).strftime("%a %d %b %Y %H:%M %Z")


@step
def acknowledge(ctx: Inbound) -> None:
    if not (ctx.created_ticket and ctx.raw.notify and ctx.from_client) or ctx.auto_reply:
        return
    mail, ticket = ctx.email, ctx.ticket
    assert ticket is not None and ctx.sender is not None
    prefix = ctx.config.desk.ticket_prefix
    ctx.outbox.queue(
        dedupe_key=f"ack:{ticket.id}", template="acknowledgement", to=[ctx.sender.email],
        subject=ack_subject(prefix, ticket.id, ticket.subject), ticket=ticket,
        in_reply_to=mail.message_id, references=[*mail.references],
        context={"ref": ticket_ref(prefix, ticket.id), "requester_name": mail.from_name,
                 "first_response_due": _first_response_due(ctx), **_ack_facts(ctx)})


def _ack_facts(ctx: Inbound) -> dict[str, Any]:
    """What a client asks on reading an acknowledgement: when the support hours of their
    priority are, how to escalate, and in which zone the due time is shown."""
    ticket = ctx.ticket
    assert ticket is not None
    config = ctx.config
    plan = config.plans[ticket.org.plan]
    org = config.org(ticket.org.slug)
    return {"support_hours": describe_hours(config.calendars[plan.calendar_for(
                ticket.priority)]),
            "org_timezone": str(org_zone(config, ticket.org.slug, ticket.org.plan)),
            "escalation_keyword": org.escalation_keyword if org is not None else None}


@step
def page_p1(ctx: Inbound) -> None:
    """A ticket that became P1 pages the on-rota person and every lead at once."""
    ticket = ctx.ticket
    if ticket is None or not ctx.became_p1 or not ctx.raw.notify:
        return
    ref = ctx.ticket_ref
    rota = on_rota(ctx.config.rota, ctx.now.astimezone(desk_zone(ctx.config)).date())
    people = list(dict.fromkeys([p for p in [rota, *(s.email for s in ctx.config.leads())]
                                 if p]))
    for email in people:
        root = staff_thread_root(ctx.services, ticket.id, email)
        row = ctx.outbox.queue(
            dedupe_key=f"p1-page:{ticket.id}:{email}", on_ticket=False, template="p1_page",
            to=[email], subject=f"[{ref}] P1 PAGE: {ticket.subject}"[:MAX_SUBJECT],
            ticket=ticket, reply_to=ctx.services.reply_address(ticket.id),
            in_reply_to=root, references=[root],
            context={"ref": ref, "reason": ctx.priority_reason,
                     "first_response_due": _first_response_due(ctx),
                     "text": ctx.new_text})
        if row is not None:
            add_event(ctx.session, ticket, "p1_paged", ctx.now, "system", to=email)


# The columns the summaries need, not whole messages (their HTML, headers...).
_RECENT = (select(Message.direction, Message.kind, Message.from_addr, Message.sent_at,
                  Message.created_at, Message.stripped_text, Message.text)
           .where(Message.ticket_id == bindparam("ticket_id"))
           .order_by(Message.id.desc()).limit(5))


@step
def notify_staff(ctx: Inbound) -> None:
    """A client's new ticket or reply goes to the assignee (or whoever is on rota), with
    a Reply-To that carries the signed ticket token so their answer finds its way back,
    the client's files (up to ``notify_attachment_bytes``), and threading headers that
    keep one ticket one conversation in the staff member's mail client."""
    ticket = ctx.ticket
    if ticket is None or not ctx.from_client or not ctx.raw.notify or ctx.auto_reply:
        return
    assignee = staff_by_id(ctx.session, ticket.assignee_id) if ticket.assignee_id else None
    person = assignee.email if assignee else on_rota(
        ctx.config.rota, ctx.now.astimezone(desk_zone(ctx.config)).date())
    if not person:
        return
    what = "New ticket" if ctx.created_ticket else "Client reply"
    # The stored message's files are the parsed email's (``record``): none to look up
    # when it had none.
    files = (message_attachments(ctx.session, ctx.message.id)
             if ctx.message and ctx.email.attachments else [])
    chosen = files_for_notification(facts(files), ctx.config.desk.notify_attachment_bytes)
    attach_ids = {f.key for f in chosen.attach}
    queue_staff_notification(
        ctx, ticket, person, dedupe_key=f"staff_notification:{ctx.raw.id}:{person}",
        what=what, new_text=quoted(ctx.visible_text), from_addr=ctx.email.from_addr or "",
        files=[draft_file(a) for a in files if a.id in attach_ids],
        inline_images=[a.content_id for a in files
                       if a.id in attach_ids and a.inline and a.content_id],
        listed=[{"filename": f.filename, "size": human_size(f.size)} for f in chosen.listed])


def queue_staff_notification(ctx: Inbound, ticket: Ticket, person: str, *, dedupe_key: str,
                             what: str, new_text: str, from_addr: str,
                             files: list[dict[str, Any]] | None = None,
                             inline_images: list[str] | None = None,
                             listed: list[dict[str, Any]] | None = None) -> None:
    """One staff notification about ``ticket`` to ``person``: the same facts in the text
    and HTML parts (``staff_notification`` templates), due times in their zone, the last
    messages, the command hint; threaded under one root per ticket and recipient."""
    if ctx.created_ticket and ctx.message is not None:
        # A ticket this email opened: its one message is the email itself, and no
        # notification about it went to anyone before this run.
        recent: list[Any] = [ctx.message]
        earlier = sum(1 for row, _ in ctx.outbox.written
                      if row.ticket_id == ticket.id and row.template == "staff_notification"
                      and row.recipient == person.lower())
    else:
        recent = list(ctx.session.execute(_RECENT, {"ticket_id": ticket.id}))[::-1]
        earlier = ctx.session.scalar(select(func.count(Outbox.id)).where(
            Outbox.ticket_id == ticket.id, Outbox.template == "staff_notification",
            Outbox.recipient == person.lower())) or 0
    zone = staff_zone(ctx.config, person)
    due = [{"target": c.target.replace("_", " "), "at": local_time(c.due_at, zone),
            "in": due_phrase(ctx.now, c.due_at)} for c in ctx.running_clocks()]
    ref = ctx.ticket_ref
    root = staff_thread_root(ctx.services, ticket.id, person)
    org = ctx.config.org(ticket.org.slug)
    ctx.outbox.queue(
        dedupe_key=dedupe_key, on_ticket=False, template="staff_notification", to=[person],
        # The same subject every time: Gmail threads only emails whose subjects agree.
        subject=f"[{ref}] {ticket.subject}"[:MAX_SUBJECT],
        ticket=ticket, reply_to=ctx.services.reply_address(ticket.id),
        in_reply_to=root, references=[root], files=files or [],
        extra_headers={"Thread-Topic": f"[{ref}] {ticket.subject}"[:MAX_SUBJECT],
                       "Thread-Index": outlook_thread_index(
                           f"{ref}:{person.lower()}", ticket.created_at, earlier + 1)},
        context={"ref": ref, "new_text": new_text, "what": what, "from_addr": from_addr,
                 "org_name": org.name if org else ticket.org.name,
                 "recent": [_message_summary(m, zone) for m in recent], "due": due,
                 "zone": str(zone), "inline_images": inline_images or [],
                 "listed": listed or []})


QUOTE_LIMIT = 64 * 1024


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Client text copied into a notification, bounded: a client can send megabytes, and
    the whole of it is on the ticket anyway."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    rest_kb = (len(data) - limit + 1023) // 1024
    return (data[:limit].decode("utf-8", "ignore")
            + f"\n\n[... {rest_kb} KB more in the ticket]")


def _message_summary(message: Any, zone: ZoneInfo) -> dict[str, Any]:
    """One of the ticket's last messages (a row of ``_RECENT``) for the template."""
    return {"direction": message.direction, "kind": message.kind,
            "from_addr": message.from_addr, "sent_at": message.sent_at,
            "created_at": message.created_at,
            "when": local_time(message.sent_at or message.created_at, zone),
            # The template shows 500 characters of each; keep a little more than that.
            "stripped_text": quoted(message.stripped_text or "", 2000),
            "text": quoted(message.text or "", 2000)}


@step
def answer_signoff_refusal(ctx: Inbound) -> None:
    """Someone who may not sign off tried to: tell them who can."""
    ticket = ctx.ticket
    if ticket is None or not ctx.signoff_refused or ctx.sender is None:
        return
    org = ctx.config.org(ticket.org.slug)
    approvers = [c.email for c in org.contacts if c.can_approve] if org else []
    prefix = ctx.config.desk.ticket_prefix
    ctx.outbox.queue(
        dedupe_key=f"signoff-refused:{ctx.raw.id}", template="signoff_not_approver",
        to=[ctx.sender.email], subject=ack_subject(prefix, ticket.id, ticket.subject),
        ticket=ticket, in_reply_to=ctx.email.message_id, references=[*ctx.email.references],
        context={"ref": ticket_ref(prefix, ticket.id), "approvers": approvers})


# --- reactions to outcomes (run by the runner, in the record transaction) ---------------

def notice_unknown_sender(ctx: Inbound, outcome: Outcome) -> None:
    """A polite notice, at most once per address per day, and never to automatic mail
    (no backscatter to forged senders of bulk mail)."""
    if ctx.parsed is None:
        return
    address = (ctx.email.from_addr or "").lower()
    if ctx.auto_reply or not address or not ctx.raw.notify:
        return
    day = ctx.now.date().isoformat()
    ctx.outbox.queue(dedupe_key=f"unknown-sender:{address}:{day}", template="unknown_sender",
                     to=[address], subject=f"Re: {ctx.email.subject or 'your email'}"[
                         :MAX_SUBJECT],
                     in_reply_to=ctx.email.message_id, context={})


def tell_staff_member(ctx: Inbound, outcome: Outcome) -> None:
    """Mail from a staff address was quarantined (a mistake, or a forgery): the
    *configured* staff address — never the email's envelope or Reply-To — is told what
    arrived, why nothing was done and how to do it right; at most once an hour."""
    verdict = outcome.data
    staff = getattr(verdict, "notify_staff", None)
    if not staff or ctx.parsed is None or not ctx.raw.notify:
        return
    member = ctx.config.staff_member(staff)
    if member is None:
        return
    hour = ctx.now.strftime("%Y-%m-%dT%H")
    ctx.outbox.queue(
        dedupe_key=f"staff-quarantine:{member.email}:{hour}", on_ticket=False,
        template="staff_quarantine_notice", to=[member.email],
        subject="Not acted on: an email from your address"[:MAX_SUBJECT],
        context={"from_addr": ctx.email.from_addr or "", "subject":
                 (ctx.email.subject or "")[:MAX_SUBJECT],
                 "envelope": ctx.raw.envelope_from or "", "reason": outcome.reason,
                 "detail": outcome.detail, "received": ctx.now.strftime("%Y-%m-%d %H:%M UTC")})


def bounce_bookkeeping(ctx: Inbound, outcome: Outcome) -> None:
    verdict = outcome.data
    if verdict is None:
        return
    ticket = record_bounce(ctx.session, ctx.config, ctx.outbox,
                           addresses=list(verdict.bounced_addresses),
                           permanent=verdict.permanent,
                           original_message_id=verdict.original_message_id,
                           reason=verdict.reason, now=ctx.now)
    if ticket is not None:
        ctx.raw.ticket_id = ticket.id


def answer_balance(ctx: Inbound, outcome: Outcome) -> None:
    """This month's allowance, used, rollover and remaining, per ticket."""
    if outcome.data != "answer" or ctx.org is None or ctx.sender is None:
        return
    balance = org_month_balance(ctx.session, ctx.config, ctx.org, ctx.now)
    usage = per_ticket_usage(ctx.session, ctx.org, balance.year, balance.month) \
        if balance else []
    prefix = ctx.config.desk.ticket_prefix
    ctx.outbox.queue(
        dedupe_key=f"balance:{ctx.raw.id}", template="balance", to=[ctx.sender.email],
        subject=f"Support balance for {ctx.org.name}", in_reply_to=ctx.email.message_id,
        references=[*ctx.email.references],
        context={"org_name": ctx.org.name, "balance": balance,
                 "usage": [(ticket_ref(prefix, t.id), t.subject, used) for t, used in usage]})


def _tell_staff_not_sent(ctx: Inbound, template: str, why: str,
                         context: dict[str, object]) -> None:
    """Nothing of a staff reply went to the client: tell its sender, on the ticket's
    thread, what was wrong (one email per inbound email: the raw id dedupes)."""
    ticket = ctx.ticket
    if ticket is None or ctx.sender is None:
        return
    ref = ticket_ref(ctx.config.desk.ticket_prefix, ticket.id)
    ctx.outbox.queue(
        dedupe_key=f"{template.replace('_', '-')}:{ctx.raw.id}", on_ticket=False,
        template=template, to=[ctx.sender.email], subject=f"[{ref}] Not sent: {why}",
        ticket=ticket, reply_to=ctx.services.reply_address(ticket.id),
        in_reply_to=ctx.email.message_id, context={"ref": ref, **context})


def report_command_errors(ctx: Inbound, outcome: Outcome) -> None:
    """Commands not understood: nothing was sent to the client; say so, and why."""
    _tell_staff_not_sent(ctx, "command_errors", "commands not understood",
                         {"errors": outcome.data})


def answer_queue(ctx: Inbound, outcome: Outcome) -> None:
    """A staff member's queue (``queue``/``mine``/``all``), to their *configured* address:
    one line per ticket, each with that ticket's reply address."""
    member = ctx.config.staff_member(ctx.email.from_addr or "")
    if outcome.data not in ("mine", "all") or member is None:
        return
    lines = queue_lines(ctx.session, ctx.services, member.email, outcome.data, ctx.now)
    ctx.outbox.queue(
        dedupe_key=f"queue:{ctx.raw.id}", on_ticket=False, template="staff_queue",
        to=[member.email], subject=f"Your queue ({outcome.data}): {len(lines)} open tickets",
        in_reply_to=ctx.email.message_id,
        context={"kind": outcome.data, "lines": lines, "ref": "",
                 "zone": str(staff_zone(ctx.config, member.email))})


def report_relay_refused(ctx: Inbound, outcome: Outcome) -> None:
    """A staff reply whose files cannot go to the client: nothing was sent; say why."""
    _tell_staff_not_sent(ctx, "relay_refused", "attachments too large",
                         {"problems": outcome.data,
                          "limit": human_size(ctx.config.desk.notify_attachment_bytes)})


def note_duplicate(ctx: Inbound, outcome: Outcome) -> None:
    if isinstance(outcome.data, int):
        ctx.raw.ticket_id = outcome.data
