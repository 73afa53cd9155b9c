"""Terminal tables of the operator's CLI (rich): one line per row, cut to the terminal.

``tickets list`` is the table people live in: ref, priority, status, org name, assignee,
next due (relative and absolute, overdue in red) and the subject, which takes whatever
width is left and is cut with an ellipsis. Colours only on a terminal (rich drops them
when piped)."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Select, exists, or_, select

from postdesk.storage.models import Message, Org, SlaClock, Staff, Ticket
from postdesk.workflow.rules.errors import UserError
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.report import relative

STAFF_ENV = "POSTDESK_STAFF"   # who "me" is in `tickets list --assignee me`


def console(file: TextIO | None = None) -> Console:
    # soft_wrap off and no_wrap columns: a row never spills onto a second line.
    return Console(file=file or sys.stdout, highlight=False, soft_wrap=False)


def resolve_assignee(value: str) -> str:
    """``me`` is ``$POSTDESK_STAFF``; anything else is taken as an email address."""
    if value != "me":
        return value.lower()
    me = os.environ.get(STAFF_ENV, "").strip().lower()
    if not me:
        raise UserError(f"--assignee me: set {STAFF_ENV} to your staff email address")
    return me


def filter_tickets(query: Select[Any], *, status: str | None = None, org: str | None = None,
                   priority: str | None = None, assignee: str | None = None,
                   search: str | None = None, overdue_at: datetime | None = None
                   ) -> Select[Any]:
    """The filters of ``tickets list`` on a ticket query."""
    if status:
        query = query.where(Ticket.status == status)
    if org:
        query = query.where(Ticket.org_id == select(Org.id).where(Org.slug == org)
                            .scalar_subquery())
    if priority:
        query = query.where(Ticket.priority == priority)
    if assignee:
        query = query.where(Ticket.assignee_id == select(Staff.id).where(
            Staff.email == assignee).scalar_subquery())
    if search:
        pattern = f"%{search}%"
        query = query.where(or_(Ticket.subject.ilike(pattern), exists().where(
            Message.ticket_id == Ticket.id, Message.text.ilike(pattern))))
    if overdue_at is not None:
        query = query.where(exists().where(
            SlaClock.ticket_id == Ticket.id, SlaClock.stopped_at.is_(None),
            SlaClock.paused_since.is_(None), SlaClock.due_at < overdue_at))
    return query


def next_due(ticket: Ticket) -> datetime | None:
    """The earliest due instant among the ticket's running clocks."""
    dues = [c.due_at for c in ticket.clocks if c.stopped_at is None]
    return min(dues) if dues else None


def tickets_table(tickets: list[Ticket], prefix: str, now: datetime, zone: ZoneInfo,
                  width: int) -> Table:
    """Fixed widths for the short columns (cut with an ellipsis) and the rest of the
    terminal for the subject: rich's own shrinking squeezes the short columns first."""
    rows = []
    for ticket in tickets:
        due = next_due(ticket)
        if due is None:
            due_cell = Text("-")
        else:
            local = due.astimezone(zone).strftime("%d %b %H:%M")
            due_cell = Text(f"{relative(due, now)} ({local})",
                            style="bold red" if due < now else "")
        assignee = ticket.assignee.email.split("@", 1)[0] if ticket.assignee else "-"
        rows.append((ticket_ref(prefix, ticket.id),
                     Text(ticket.priority, style="bold red" if ticket.priority == "P1" else ""),
                     Text(ticket.status), Text(ticket.org.name), Text(assignee), due_cell,
                     Text(ticket.subject)))
    headers = ("REF", "PRI", "STATUS", "ORG", "ASSIGNEE", "NEXT DUE", "SUBJECT")
    caps = (10, 3, 11, 14, 10, 26)
    widths = [min(cap, max([len(headers[i])] + [len(str(r[i])) for r in rows]))
              for i, cap in enumerate(caps)]
    # One space between columns; the subject gets what is left (at least 8).
    widths.append(max(8, width - sum(widths) - len(headers) + 1))
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold",
                  show_edge=False, collapse_padding=True)
    for header, column_width in zip(headers, widths, strict=True):
        table.add_column(header, no_wrap=True, overflow="ellipsis", width=column_width)
    for row in rows:
        table.add_row(*row)
    return table
