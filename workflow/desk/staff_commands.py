"""Apply one parsed staff command (``#priority P1``, ``#assign dana``, ``#time 45m``…) to
a ticket. Takes a Session and explicit arguments, not an email: the CLI or any other
door could apply a command the same way."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.directory import staff_by_email
from postdesk.storage.models import Message, Staff, Ticket
from postdesk.workflow.desk.allowance import log_time
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.rules import commands as cmd
from postdesk.workflow.rules.refs import ticket_ref


def apply_command(session: Session, services: Services, outbox: OutboxWriter, *,
                  ticket: Ticket, staff: Staff, command: cmd.Command, message: Message,
                  now: datetime, dedupe: str) -> None:
    """``dedupe`` names the email that carried the command, so a notification it causes
    is queued once however often that email is processed."""
    keeper = services.clocks(session)
    actor = staff.email
    if isinstance(command, cmd.SetPriority):
        if command.priority != ticket.priority:
            old, ticket.priority = ticket.priority, command.priority
            keeper.reprioritise(ticket, now)
            add_event(session, ticket, "priority_changed", now, actor, old=old,
                      new=command.priority, reason="staff")
    elif isinstance(command, cmd.SetStatus):
        set_status(keeper, ticket, command.status, now, actor)
    elif isinstance(command, cmd.Assign):
        target = resolve_staff(session, command.who, staff)
        if target is not None:
            ticket.assignee_id = target.id
            add_event(session, ticket, "assigned", now, actor, assignee=target.email)
    elif isinstance(command, cmd.LogTime):
        log_time(session, services.config, outbox, ticket=ticket, staff=staff,
                 duration=command.duration, message=message, now=now)
    elif isinstance(command, cmd.FollowUp):
        keeper.followup(ticket, command.due, now)
        add_event(session, ticket, "followup_set", now, actor, due=command.due.isoformat())
    elif isinstance(command, cmd.Chargeable):
        ticket.chargeable = True
        add_event(session, ticket, "marked_chargeable", now, actor)
        ref = ticket_ref(services.config.desk.ticket_prefix, ticket.id)
        for email in dict.fromkeys(s.email for s in services.config.leads()):
            outbox.queue(dedupe_key=f"chargeable:{dedupe}:{email}", on_ticket=False,
                         template="chargeable", to=[email],
                         subject=f"[{ref}] Out of scope: {ticket.subject}", ticket=ticket,
                         reply_to=services.reply_address(ticket.id),
                         context={"ref": ref, "by": actor})
    elif isinstance(command, cmd.Cc) and command.email not in ticket.cc:
        ticket.cc = [*ticket.cc, command.email]
        add_event(session, ticket, "cc_added", now, actor, email=command.email)


def resolve_staff(session: Session, who: str, me: Staff) -> Staff | None:
    if who == "me":
        return me
    if "@" in who:
        return staff_by_email(session, who)
    # A name matches the full name, the first name or the mailbox part of the address.
    wanted = who.lower()
    for staff in session.scalars(select(Staff).where(Staff.active.is_(True))):
        names = {staff.name.lower(), *staff.name.lower().split()[:1],
                 staff.email.split("@")[0]}
        if wanted in names:
            return staff
    return None
