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


def tickets_table(tickets: list[Ticket], prefix: str, now: datetime, zone: ZoneInfo) -> Table:
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold",
                  expand=False)
    table.add_column("REF", no_wrap=True)
    table.add_column("PRI", no_wrap=True)
    table.add_column("STATUS", no_wrap=True, max_width=11, overflow="ellipsis")
    table.add_column("ORG", no_wrap=True, max_width=14, overflow="ellipsis")
    table.add_column("ASSIGNEE", no_wrap=True, max_width=12, overflow="ellipsis")
    table.add_column("NEXT DUE", no_wrap=True, overflow="ellipsis")
    table.add_column("SUBJECT", no_wrap=True, overflow="ellipsis", ratio=1, min_width=8)
    for ticket in tickets:
        due = next_due(ticket)
        if due is None:
            due_cell = Text("-")
        else:
            local = due.astimezone(zone).strftime("%d %b %H:%M")
            due_cell = Text(f"{relative(due, now)} ({local})",
                            style="bold red" if due < now else "")
        assignee = ticket.assignee.email.split("@", 1)[0] if ticket.assignee else "-"
        table.add_row(ticket_ref(prefix, ticket.id),
                      Text(ticket.priority, style="bold red" if ticket.priority == "P1"
                           else ""),
                      ticket.status, ticket.org.name, assignee, due_cell, ticket.subject)
    return table
