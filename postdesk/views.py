"""The JSON shapes of docs/reference.md (tickets, outbox, quarantine)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from postdesk.storage.models import Outbox, RawMessage, Ticket
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.report import clock_outcome


def iso(at: datetime | None) -> str | None:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else None


def ticket_list_query() -> Select[Ticket]:
    """Tickets with what their JSON needs loaded up front: one query per relation
    for the whole list, not one per ticket."""
    return select(Ticket).options(selectinload(Ticket.clocks), selectinload(Ticket.org),
                                  selectinload(Ticket.assignee)).order_by(Ticket.id)


def _clock_summary(ticket: Ticket, now: datetime | None) -> dict[str, Any]:
    """Running clocks' due instants, and the targets missed: stopped after due, or
    running past due (``rules.report.clock_outcome``; the breach alert is only the
    alert). Without ``now``, a running clock counts once its breach was alerted."""
    due: dict[str, str | None] = {}
    breaches: list[str] = []
    for clock in ticket.clocks:
        if clock.stopped_at is None:
            due[clock.target] = iso(clock.due_at)
        at = now or (clock.breached_at if clock.stopped_at is None else None) or clock.due_at
        missed = clock_outcome(clock.due_at, clock.stopped_at, at) == "missed"
        if missed and clock.target not in breaches:
            breaches.append(clock.target)
    return {"due": due, "breaches": breaches}


def ticket_json(session: Session, ticket: Ticket, prefix: str, *, messages: bool = False,
                staff_view: bool = True, now: datetime | None = None) -> dict[str, Any]:
    sla = _clock_summary(ticket, now)
    assignee = ticket.assignee
    data: dict[str, Any] = {
        "ref": ticket_ref(prefix, ticket.id),
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "org": ticket.org.slug,
        "requester": ticket.requester_email,
        "assignee": assignee.email if assignee else None,
        "cc": list(ticket.cc or []),
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "first_response_due": sla["due"].get("first_response"),
        "next_update_due": sla["due"].get("next_update"),
        "resolution_due": sla["due"].get("resolution"),
        "followup_due": sla["due"].get("followup"),
        "first_responded_at": iso(ticket.first_responded_at),
        "resolved_at": iso(ticket.resolved_at),
        "breaches": sla["breaches"],
    }
    if messages:
        data["messages"] = [
            {"direction": m.direction, "kind": m.kind, "from": m.from_addr,
             "from_name": m.from_name or None, "has_html": m.html is not None,
             "parse_defects": list(m.parse_defects or []),
             "message_id": m.message_id, "in_reply_to": m.in_reply_to,
             "subject": m.subject, "date": iso(m.sent_at or m.created_at),
             "text": m.stripped_text or m.text, "full_text": m.text,
             "attachments": [{"filename": a.filename, "size": a.size,
                              "content_type": a.content_type, "inline": a.inline,
                              "kept": a.sha256 is not None, "note": a.note}
                             for a in m.attachments]}
            for m in ticket.messages if staff_view or m.kind != "internal"]
    return data


def outbox_json(row: Outbox, prefix: str) -> dict[str, Any]:
    return {"id": row.id, "to": list(row.to), "cc": list(row.cc), "subject": row.subject,
            "message_id": row.message_id, "in_reply_to": row.in_reply_to,
            "template": row.template,
            "ticket": ticket_ref(prefix, row.ticket_id) if row.ticket_id else None,
            "status": row.status, "attempts": row.attempts, "last_error": row.last_error,
            "bounced_address": row.bounced_address,
            "created_at": iso(row.created_at), "sent_at": iso(row.sent_at)}


def raw_json(row: RawMessage) -> dict[str, Any]:
    return {"id": row.id, "status": row.status, "reason": row.reason, "detail": row.detail,
            "source": row.source, "from": row.from_addr, "subject": row.subject,
            "message_id": row.message_id, "envelope_from": row.envelope_from,
            "received_at": iso(row.received_at), "size": row.size, "sha256": row.sha256}
