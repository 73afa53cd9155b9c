"""A staff member's queue, answered by email: their open tickets (``mine``), or those
and the unassigned ones (``all``), sorted by the next due instant. Read-only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from postdesk.storage.directory import org_by_id, staff_by_email
from postdesk.storage.models import SlaClock, Ticket
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.due_text import due_phrase, local_time
from postdesk.workflow.rules.queue import QueueKind
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.zones import staff_zone

OPEN = ("new", "open", "pending", "awaiting_signoff")
# The earliest running (not paused) due instant of each ticket.
_NEXT_DUE = (select(SlaClock.ticket_id, func.min(SlaClock.due_at).label("due"))
             .where(SlaClock.stopped_at.is_(None), SlaClock.paused_since.is_(None))
             .group_by(SlaClock.ticket_id).subquery())


def queue_lines(session: Session, services: Services, staff_email: str, kind: QueueKind,
                now: datetime) -> list[dict[str, Any]]:
    """One plain dict per ticket (template data), soonest due first; tickets with no
    running clock last, oldest first."""
    staff = staff_by_email(session, staff_email)
    mine = Ticket.assignee_id == (staff.id if staff else -1)
    who = or_(mine, Ticket.assignee_id.is_(None)) if kind == "all" else mine
    rows = list(session.execute(
        select(Ticket, _NEXT_DUE.c.due).outerjoin(_NEXT_DUE, _NEXT_DUE.c.ticket_id == Ticket.id)
        .where(Ticket.status.in_(OPEN), who)))
    rows.sort(key=lambda r: (r.due is None, r.due or r.Ticket.created_at, r.Ticket.id))
    zone = staff_zone(services.config, staff_email)
    prefix = services.config.desk.ticket_prefix
    lines = []
    for ticket, due in rows:
        org = org_by_id(session, ticket.org_id)
        lines.append({
            "ref": ticket_ref(prefix, ticket.id), "subject": ticket.subject,
            "priority": ticket.priority, "status": ticket.status,
            "org": org.name if org else "", "mine": staff is not None and
            ticket.assignee_id == staff.id,
            "due_at": local_time(due, zone) if due else None,
            "due_in": due_phrase(now, due) if due else "no running clock",
            "reply_to": services.reply_address(ticket.id)})
    return lines
