"""Pipeline steps for staff email: replies relayed to the client, commands, internal
notes, time logging, follow-ups; and staff notifications of client email.

Trust: a staff From header alone proves nothing. Commands run, and a reply is relayed,
only when the email is tied to the ticket by one of our signed tokens (the reply
address or a Message-ID of ours it answers), its envelope sender is not someone else's
address, and — where the staff domain requires it — it passed DKIM."""

from __future__ import annotations

import base64
import hashlib
import struct
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from postdesk.mail.tokens import make_reply_address
from postdesk.storage.directory import staff_by_email
from postdesk.storage.models import Message, Staff, Ticket, TimeEntry
from postdesk.workflow.desk.events import add_event, ticket_ref
from postdesk.workflow.desk.outbox import queue_email
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.pipeline.runner import Handled, Quarantine, step
from postdesk.workflow.rules import commands as cmd

if TYPE_CHECKING:
    from postdesk.workflow.pipeline.process import Inbound


def _is_staff(ctx: Inbound) -> bool:
    return ctx.sender is not None and ctx.sender.kind == "staff"


def _tz(ctx: Inbound, ticket: Ticket | None = None) -> ZoneInfo:
    ticket = ticket or ctx.ticket
    plan = ctx.config.plans[ticket.org.plan] if ticket else None
    name = ctx.config.calendars[plan.calendar].timezone if plan else ctx.config.digest.timezone
    return ZoneInfo(name)


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


def _reply_to(ctx: Inbound, ticket: Ticket) -> str:
    return make_reply_address(ctx.app.secret, ctx.config.desk.support_addresses[0],
                              ctx.config.desk.ticket_prefix, ticket.id)


def _client_thread(ctx: Inbound, ticket: Ticket) -> tuple[str | None, list[str]]:
    """In-Reply-To and References that put our reply in the client's own thread: the
    client's latest email, and the ids of the conversation so far."""
    rows = ctx.session.execute(
        select(Message.message_id, Message.direction, Message.kind, Message.author_staff_id)
        .where(Message.ticket_id == ticket.id, Message.message_id.is_not(None),
               Message.kind != "internal")
        .order_by(Message.id)).all()
    # The client's own emails, and what the client saw from us; never the staff member's
    # email to postdesk, which the client never received.
    client_ids = [r.message_id for r in rows if r.direction == "in" and r.author_staff_id is None]
    public_ids = [r.message_id for r in rows if (r.direction == "in" and r.author_staff_id is None)
                  or (r.direction == "out" and r.kind in ("public", "system"))]
    return (client_ids[-1] if client_ids else None), public_ids


def outlook_thread_index(ticket_key: str, at: datetime, replies: int) -> str:
    """An Outlook ``Thread-Index``: a 22-byte header block (FILETIME + GUID) that is the
    same for every email of a ticket, plus a 5-byte child block per reply, so Outlook
    groups our emails into one conversation (MS-OXOMSG 2.2.1.3)."""
    guid = hashlib.sha256(ticket_key.encode()).digest()[:16]
    filetime = int((at.timestamp() + 11644473600) * 10_000_000)
    header = struct.pack(">Q", filetime)[:6] + guid
    children = b"".join(struct.pack(">IB", (i + 1) << 8, 0)[:5] for i in range(replies))
    return base64.b64encode(header + children).decode()


# --- steps --------------------------------------------------------------------------------

@step
def staff_mail(ctx: Inbound) -> None:
    """Handle a staff email completely, then end the pipeline."""
    if not _is_staff(ctx):
        return
    mail = ctx.email
    if ctx.auto_reply:
        # A staff out-of-office answering a notification: note it, never relay it.
        if ctx.ticket is None:
            raise Quarantine("auto_reply", f"{ctx.auto_reason} from staff")
        staff = staff_by_email(ctx.session, mail.from_addr or "")
        assert staff is not None
        _store(ctx, "system", ctx.visible_text, staff)
        raise Handled("auto_reply")
    parse = cmd.parse_commands(ctx.visible_text, now=ctx.now, tz=_tz(ctx))
    if ctx.ticket is None:
        _start_ticket_for_client(ctx, parse)
        return
    trusted, why = staff_reply_trusted(ctx)
    if not trusted:
        raise Quarantine("unauthenticated", f"staff reply not trusted: {why}")
    staff = staff_by_email(ctx.session, mail.from_addr or "")
    assert staff is not None
    ticket = ctx.ticket
    if parse.errors:
        _store(ctx, "internal", parse.body, staff)
        add_event(ctx.session, ticket, "command_errors", ctx.now, staff.email,
                  errors=[f"{e.line}: {e.problem}" for e in parse.errors])
        _queue_command_errors(ctx, staff, parse)
        raise Handled("command_errors")
    internal = any(isinstance(c, cmd.Internal) for c in parse.commands)
    body = parse.body.strip()
    message = _store(ctx, "internal" if internal or not body else "public", body, staff)
    for command in parse.commands:
        apply_command(ctx, ticket, staff, command, message)
    if body and not internal:
        relay_to_client(ctx, ticket, staff, body)
    raise Handled("staff_reply")


def _store(ctx: Inbound, kind: str, body: str, staff: Staff) -> Message:
    from postdesk.workflow.pipeline.process import store_message

    return store_message(ctx, kind=kind, direction="in", text=body, author_staff_id=staff.id)


def _start_ticket_for_client(ctx: Inbound, parse: cmd.CommandParse) -> None:
    """A staff email with no ticket token starts a ticket on a client's behalf when it
    names one (``#org clientco`` or ``#requester alice@client.example``)."""
    org_slug = next((c.slug for c in parse.commands if isinstance(c, cmd.SetOrg)), None)
    requester = next((c.email for c in parse.commands if isinstance(c, cmd.SetRequester)),
                     None)
    if not org_slug and not requester:
        raise Quarantine("no_ticket", "staff email with no ticket token and no #org or "
                                      "#requester to start one")
    from postdesk.storage.directory import org_by_slug
    from postdesk.workflow.rules.senders import identify_sender

    if requester:
        who = identify_sender(requester, ctx.config)
        org_slug = org_slug or who.org_slug
    org = org_by_slug(ctx.session, org_slug) if org_slug else None
    if org is None:
        raise Quarantine("no_ticket", f"#org/#requester names no known org ({org_slug})")
    from postdesk.workflow.pipeline.process import open_ticket

    opener = requester or ctx.email.from_addr or ""
    open_ticket(ctx, org, opener)
    staff = staff_by_email(ctx.session, ctx.email.from_addr or "")
    assert staff is not None and ctx.ticket is not None
    ctx.ticket.assignee_id = staff.id
    message = _store(ctx, "internal", parse.body.strip(), staff)
    for command in parse.commands:
        if not isinstance(command, cmd.TICKET_CREATION_COMMANDS):
            apply_command(ctx, ctx.ticket, staff, command, message)
    raise Handled("ticket_opened_by_staff")


def apply_command(ctx: Inbound, ticket: Ticket, staff: Staff, command: cmd.Command,
                  message: Message) -> None:
    keeper = ctx.app.keeper(ctx.session)
    actor = staff.email
    if isinstance(command, cmd.SetPriority):
        if command.priority != ticket.priority:
            old, ticket.priority = ticket.priority, command.priority
            keeper.reprioritise(ticket, ctx.now)
            add_event(ctx.session, ticket, "priority_changed", ctx.now, actor, old=old,
                      new=command.priority, reason="staff")
    elif isinstance(command, cmd.SetStatus):
        set_status(keeper, ticket, command.status, ctx.now, actor)
    elif isinstance(command, cmd.Assign):
        target = _resolve_staff(ctx, command.who, staff)
        if target is not None:
            ticket.assignee_id = target.id
            add_event(ctx.session, ticket, "assigned", ctx.now, actor, assignee=target.email)
    elif isinstance(command, cmd.LogTime):
        log_time(ctx, ticket, staff, command.duration, message)
    elif isinstance(command, cmd.FollowUp):
        keeper.followup(ticket, command.due, ctx.now)
        add_event(ctx.session, ticket, "followup_set", ctx.now, actor,
                  due=command.due.isoformat())
    elif isinstance(command, cmd.Chargeable):
        ticket.chargeable = True
        add_event(ctx.session, ticket, "marked_chargeable", ctx.now, actor)
        _notify_staff(ctx, ticket, [s.email for s in ctx.config.leads()], "chargeable",
                      f"Out of scope: {ticket.subject}", {"by": actor})
    elif isinstance(command, cmd.Cc) and command.email not in ticket.cc:
        ticket.cc = [*ticket.cc, command.email]
        add_event(ctx.session, ticket, "cc_added", ctx.now, actor, email=command.email)


def _resolve_staff(ctx: Inbound, who: str, me: Staff) -> Staff | None:
    if who == "me":
        return me
    if "@" in who:
        return staff_by_email(ctx.session, who)
    # A name matches the full name, the first name or the mailbox part of the address.
    wanted = who.lower()
    for staff in ctx.session.scalars(select(Staff).where(Staff.active.is_(True))):
        names = {staff.name.lower(), *staff.name.lower().split()[:1],
                 staff.email.split("@")[0]}
        if wanted in names:
            return staff
    return None


def log_time(ctx: Inbound, ticket: Ticket, staff: Staff, duration: timedelta,
             message: Message) -> None:
    from postdesk.workflow.desk.allowance import org_month_balance

    tz = _tz(ctx, ticket)
    local = ctx.now.astimezone(tz)
    before = org_month_balance(ctx.session, ctx.config, ticket.org, ctx.now)
    ctx.session.add(TimeEntry(ticket_id=ticket.id, org_id=ticket.org_id, staff_id=staff.id,
                              seconds=int(duration.total_seconds()), year=local.year,
                              month=local.month, logged_at=ctx.now,
                              source_message_id=message.id))
    add_event(ctx.session, ticket, "time_logged", ctx.now, staff.email,
              seconds=int(duration.total_seconds()))
    from postdesk.workflow.rules.allowance import would_exceed

    if before is not None and would_exceed(before, duration):
        _allowance_warning(ctx, ticket, before.remaining, duration)


def _allowance_warning(ctx: Inbound, ticket: Ticket, remaining: timedelta,
                       duration: timedelta) -> None:
    """The "we will contact you before starting work" promise: lead and requester are
    told once per org and month when logged time goes over the allowance."""
    local = ctx.now.astimezone(_tz(ctx, ticket))
    prefix = ctx.config.desk.ticket_prefix
    ref = ticket_ref(prefix, ticket.id)
    people = [ticket.requester_email, *(s.email for s in ctx.config.leads())]
    for email in dict.fromkeys(people):
        row = queue_email(
            ctx.session, ctx.app,
            dedupe_key=f"allowance:{ticket.org.slug}:{local.year}-{local.month}:{email}",
            template="allowance_exceeded", to=[email],
            subject=f"[{ref}] Support allowance for {ticket.org.name} used up", ticket=ticket,
            context={"ref": ref, "remaining": remaining, "logged": duration,
                     "org_name": ticket.org.name}, now=ctx.now)
        if row is not None:
            ctx.outbox_ids.append(row.id)
    add_event(ctx.session, ticket, "allowance_exceeded", ctx.now, "system",
              remaining_seconds=int(remaining.total_seconds()))


def relay_to_client(ctx: Inbound, ticket: Ticket, staff: Staff, body: str) -> None:
    prefix = ctx.config.desk.ticket_prefix
    ref = ticket_ref(prefix, ticket.id)
    in_reply_to, references = _client_thread(ctx, ticket)
    public_out = ctx.session.scalar(select(func.count(Message.id)).where(
        Message.ticket_id == ticket.id, Message.direction == "out")) or 0
    subject = f"Re: [{ref}] {ticket.subject}"
    keeper = ctx.app.keeper(ctx.session)
    if ticket.status == "new":
        set_status(keeper, ticket, "open", ctx.now, staff.email)
    row = queue_email(
        ctx.session, ctx.app, dedupe_key=f"relay:{ctx.raw.id}", template="staff_reply",
        to=[ticket.requester_email], cc=[c for c in ticket.cc if c != ticket.requester_email],
        subject=subject, ticket=ticket, in_reply_to=in_reply_to, references=references,
        automatic=False, kind="public",
        extra_headers={"Thread-Topic": ticket.subject,
                       "Thread-Index": outlook_thread_index(f"{prefix}-{ticket.id}",
                                                            ticket.created_at,
                                                            public_out + 1)},
        context={"ref": ref, "body": body, "staff_name": staff.name or staff.email},
        now=ctx.now)
    if row is not None:
        ctx.outbox_ids.append(row.id)
    keeper.public_update(ticket, ctx.now)
    add_event(ctx.session, ticket, "public_reply", ctx.now, staff.email)


def _queue_command_errors(ctx: Inbound, staff: Staff, parse: cmd.CommandParse) -> None:
    assert ctx.ticket is not None
    ref = ticket_ref(ctx.config.desk.ticket_prefix, ctx.ticket.id)
    row = queue_email(
        ctx.session, ctx.app, dedupe_key=f"command-errors:{ctx.raw.id}",
        on_ticket=False, template="command_errors", to=[staff.email],
        subject=f"[{ref}] Not sent: commands not understood", ticket=ctx.ticket,
        reply_to=_reply_to(ctx, ctx.ticket), in_reply_to=ctx.email.message_id,
        context={"ref": ref, "errors": parse.errors}, now=ctx.now)
    if row is not None:
        ctx.outbox_ids.append(row.id)


def _notify_staff(ctx: Inbound, ticket: Ticket, people: list[str], template: str,
                  subject: str, context: dict[str, object]) -> None:
    ref = ticket_ref(ctx.config.desk.ticket_prefix, ticket.id)
    for email in dict.fromkeys(people):
        row = queue_email(
            ctx.session, ctx.app, dedupe_key=f"{template}:{ctx.raw.id}:{email}",
            on_ticket=False, template=template, to=[email], subject=f"[{ref}] {subject}",
            ticket=ticket,
            reply_to=_reply_to(ctx, ticket), context={"ref": ref, **context}, now=ctx.now)
        if row is not None:
            ctx.outbox_ids.append(row.id)


@step
def notify_staff(ctx: Inbound) -> None:
    """A client's new ticket or reply goes to the assignee (or whoever is on rota), with
    a Reply-To that carries the signed ticket token so their answer finds its way back."""
    ticket = ctx.ticket
    if ticket is None or ctx.sender is None or ctx.sender.kind != "contact":
        return
    if not ctx.raw.notify or ctx.auto_reply:
        return
    from postdesk.workflow.rules.rota import on_rota

    assignee = ctx.session.get(Staff, ticket.assignee_id) if ticket.assignee_id else None
    person = assignee.email if assignee else on_rota(ctx.config.rota, ctx.now.date())
    if not person:
        return
    recent = list(ctx.session.scalars(
        select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id.desc())
        .limit(5)))[::-1]
    due = {c.target: c.due_at for c in ctx.app.keeper(ctx.session).running(ticket)}
    what = "New ticket" if ctx.created_ticket else "Client reply"
    _notify_staff(ctx, ticket, [person], "staff_notification",
                  f"{what} ({ticket.priority}): {ticket.subject}",
                  {"new_text": ctx.visible_text, "recent": recent, "due": due,
                   "from_addr": ctx.email.from_addr, "what": what})
