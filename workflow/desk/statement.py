"""The monthly client statement: the month's tickets opened and resolved, SLA compliance,
time logged per ticket and the allowance with its rollover — as an email (HTML with bars,
the CSV attached) and as the figures of ``postdesk report time``.

A month is the org's own (``rules.zones.org_zone``), as for ``#time`` and ``balance``.
Orgs opt in with ``statement = true``; it goes to ``statement_to``, else to the org's
contacts with ``can_approve``, once per org and month (the outbox dedupe key), on the
first open day of the next month on the org's plan calendar (a scheduler that was down
then sends it when it is back)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from postdesk.storage.models import Org, Outbox, Ticket
from postdesk.workflow.desk.allowance import org_month_balance, per_ticket_usage
from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.reports import compliance_rows
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.rules.allowance import format_hours
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.report import (
    allowance_bar,
    month_range,
    previous_month,
    statement_csv,
)
from postdesk.workflow.rules.zones import org_zone

log = logging.getLogger("postdesk.statement")


@dataclass
class Statement:
    """One org's month (plain values: it is the template data of a draft)."""

    org: str
    org_name: str
    month: str                  # 2026-11
    month_name: str             # November 2026
    timezone: str
    opened: int = 0
    resolved: int = 0
    tickets: list[dict[str, Any]] = field(default_factory=list)
    compliance: list[dict[str, Any]] = field(default_factory=list)
    total_time: str = "0h 00m"
    total_seconds: int = 0
    allowance: dict[str, Any] | None = None


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:.2f}"


def build_statement(session: Session, services: Services, org: Org, year: int, month: int,
                    now: datetime) -> Statement:
    config = services.config
    zone = org_zone(config, org.slug, org.plan)
    start, end = month_range(year, month, zone)
    statement = Statement(org=org.slug, org_name=org.name, month=f"{year:04d}-{month:02d}",
                          month_name=start.astimezone(zone).strftime("%B %Y"),
                          timezone=str(zone))
    prefix = config.desk.ticket_prefix
    usage = {ticket.id: spent for ticket, spent in per_ticket_usage(session, org, year, month)}
    tickets = session.scalars(
        select(Ticket).options(selectinload(Ticket.org)).where(
            Ticket.org_id == org.id,
            or_(Ticket.created_at.between(start, end - timedelta(microseconds=1)),
                Ticket.resolved_at.between(start, end - timedelta(microseconds=1)),
                Ticket.id.in_(list(usage) or [-1])))
        .order_by(Ticket.id)).all()
    for ticket in tickets:
        opened_here = start <= ticket.created_at < end
        resolved_here = ticket.resolved_at is not None and start <= ticket.resolved_at < end
        statement.opened += opened_here
        statement.resolved += resolved_here
        seconds = int(usage.get(ticket.id, timedelta(0)).total_seconds())
        statement.total_seconds += seconds
        statement.tickets.append({
            "org": org.slug, "month": statement.month,
            "ticket": ticket_ref(prefix, ticket.id), "subject": ticket.subject,
            "priority": ticket.priority, "status": ticket.status,
            "opened": ticket.created_at.astimezone(zone).strftime("%Y-%m-%d"),
            "resolved": (ticket.resolved_at.astimezone(zone).strftime("%Y-%m-%d")
                         if ticket.resolved_at else ""),
            "minutes": seconds // 60, "hours": _hours(seconds),
            "time": format_hours(timedelta(seconds=seconds))})
    statement.total_time = format_hours(timedelta(seconds=statement.total_seconds))
    statement.compliance = compliance_rows(session, services, start, now, until=end,
                                           org_id=org.id)
    balance = org_month_balance(session, config, org, end - timedelta(microseconds=1))
    if balance is not None:
        bar = allowance_bar(balance.used, balance.allowance + balance.rollover_in)
        statement.allowance = {
            "allowance": format_hours(balance.allowance),
            "rollover_in": format_hours(balance.rollover_in),
            "available": format_hours(balance.allowance + balance.rollover_in),
            "used": format_hours(balance.used),
            "remaining": format_hours(balance.remaining),
            "rollover_out": format_hours(balance.rollover_out),
            "overuse_carried": format_hours(balance.overuse_carried),
            "forfeited": format_hours(balance.forfeited),
            "over": balance.remaining < timedelta(0),
            "bar": {"filled": bar.filled, "empty": bar.empty, "colour": bar.colour}}
    return statement


def statement_recipients(config: Config, org_slug: str) -> list[str]:
    org = config.org(org_slug)
    if org is None:
        return []
    if org.statement_to:
        return [a.lower() for a in org.statement_to]
    return [c.email.lower() for c in org.contacts if c.can_approve]


def statement_key(org_slug: str, month: str) -> str:
    return f"statement:{org_slug}:{month}"


def queue_statement(services: Services, dispatch: Dispatch, org_slug: str, year: int,
                    month: int, now: datetime) -> int | None:
    """Queue an org's statement for a month (once); its outbox id, or None when it was
    queued before or the org has nobody to send it to."""
    config = services.config
    to = statement_recipients(config, org_slug)
    if not to:
        log.warning("org %s: statement = true but no statement_to and no contact with "
                    "can_approve: no statement sent", org_slug)
        return None
    with services.sessions() as session, session.begin():
        org = session.scalars(select(Org).where(Org.slug == org_slug)).one()
        statement = build_statement(session, services, org, year, month, now)
        writer = OutboxWriter(session, services, now=now)
        writer.queue(dedupe_key=statement_key(org_slug, statement.month),
                     template="statement", to=to,
                     subject=f"{config.desk.name}: support statement for {org.name}, "
                             f"{statement.month_name}",
                     context={"s": statement},
                     attachments=[(f"statement-{org_slug}-{statement.month}.csv",
                                   "text/csv; charset=utf-8",
                                   statement_csv(statement.tickets))])
    release_drafts(services, dispatch, writer.queued_ids)
    return writer.queued_ids[0] if writer.queued_ids else None


def due_statements(services: Services, dispatch: Dispatch) -> list[int]:
    """Scheduler job: once the org's plan calendar has opened in a new month (its first
    open day), queue last month's statement of each opted-in org; returns outbox ids."""
    config, now = services.config, services.now()
    ids = []
    for org in config.orgs:
        if not org.statement or org.plan not in config.plans:
            continue
        zone = org_zone(config, org.slug, org.plan)
        local = now.astimezone(zone)
        month_start, _ = month_range(local.year, local.month, zone)
        calendar = services.calendars[config.plans[org.plan].calendar]
        if now < calendar.next_open(month_start):
            continue   # not yet the first open day of this month
        year, month = previous_month(local.year, local.month)
        with services.sessions() as session:
            if session.scalar(select(Outbox.id).where(Outbox.dedupe_key == statement_key(
                    org.slug, f"{year:04d}-{month:02d}"))) is not None:
                continue   # cheap check first: building a statement reads a lot
        outbox_id = queue_statement(services, dispatch, org.slug, year, month, now)
        if outbox_id is not None:
            ids.append(outbox_id)
    return ids
