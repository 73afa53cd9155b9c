"""The manager's digest: breaches since the last digest, tickets at risk now, open P1s,
SLA compliance per client and priority this month, allowance use per client.

Built per manager per period and queued under a key naming both, so a digest is never
sent twice (two schedulers, a re-run of `postdesk digest`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from postdesk.storage.models import Event, Org, SlaClock, Ticket
from postdesk.workflow.desk.allowance import hours, org_month_balance
from postdesk.workflow.desk.events import ticket_ref
from postdesk.workflow.desk.outbox import queue_email

if TYPE_CHECKING:
    from postdesk.app import App


@dataclass
class Digest:
    period: str
    since: datetime
    breaches: list[dict[str, Any]] = field(default_factory=list)
    at_risk: list[dict[str, Any]] = field(default_factory=list)
    open_p1: list[dict[str, Any]] = field(default_factory=list)
    compliance: list[dict[str, Any]] = field(default_factory=list)
    allowance: list[dict[str, Any]] = field(default_factory=list)


def period_start(app: App, now: datetime) -> tuple[str, datetime]:
    """This period's name and when the previous one ended (digest time, local)."""
    tz = ZoneInfo(app.config.digest.timezone)
    hh, mm = (int(x) for x in app.config.digest.at.split(":"))
    local = now.astimezone(tz)
    today_at = datetime.combine(local.date(), time(hh, mm), tz)
    step = timedelta(days=7 if app.config.digest.period == "weekly" else 1)
    current = today_at if local >= today_at else today_at - timedelta(days=1)
    return current.date().isoformat(), (current - step).astimezone(now.tzinfo)


def build_digest(app: App, now: datetime) -> Digest:
    prefix = app.config.desk.ticket_prefix
    period, since = period_start(app, now)
    digest = Digest(period=period, since=since)
    tz = ZoneInfo(app.config.digest.timezone)
    month_start = now.astimezone(tz).replace(day=1, hour=0, minute=0, second=0,
                                             microsecond=0)
    with app.sessions() as session:
        def row(ticket: Ticket, **extra: Any) -> dict[str, Any]:
            return {"ref": ticket_ref(prefix, ticket.id), "subject": ticket.subject,
                    "org": ticket.org.slug, "priority": ticket.priority,
                    "status": ticket.status, **extra}

        for event in session.scalars(select(Event).where(
                Event.kind == "sla_breached", Event.at >= since).order_by(Event.at)):
            ticket = session.get(Ticket, event.ticket_id)
            digest.breaches.append(row(ticket, target=event.data.get("target"),
                                       at=event.at))
        for clock in session.scalars(select(SlaClock).where(
                SlaClock.stopped_at.is_(None), SlaClock.breached_at.is_(None),
                SlaClock.at_risk_at.is_not(None)).order_by(SlaClock.due_at)):
            digest.at_risk.append(row(session.get(Ticket, clock.ticket_id),
                                      target=clock.target, due=clock.due_at))
        for ticket in session.scalars(select(Ticket).where(
                Ticket.priority == "P1", Ticket.status.not_in(("resolved", "closed")))
                .order_by(Ticket.id)):
            digest.open_p1.append(row(ticket))
        met: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for clock, ticket in session.execute(
                select(SlaClock, Ticket).join(Ticket, Ticket.id == SlaClock.ticket_id)
                .where(SlaClock.started_at >= month_start,
                       SlaClock.target.in_(("first_response", "resolution")))):
            finished = clock.stopped_at is not None or clock.breached_at is not None
            if finished:
                tally = met[(ticket.org.slug, ticket.priority)]
                tally[1] += 1
                tally[0] += clock.breached_at is None
        digest.compliance = [
            {"org": org, "priority": prio, "met": m, "total": t,
             "percent": round(100 * m / t, 1) if t else None}
            for (org, prio), (m, t) in sorted(met.items())]
        for org in session.scalars(select(Org).where(Org.active.is_(True)).order_by(Org.slug)):
            balance = org_month_balance(session, app.config, org, now)
            if balance is not None:
                digest.allowance.append({"org": org.slug, "allowance": hours(balance.allowance),
                                         "used": hours(balance.used),
                                         "remaining": hours(balance.remaining)})
    return digest


def queue_digest(app: App, manager: str, now: datetime) -> int | None:
    """Queue this period's digest for a manager; None when it was queued before."""
    digest = build_digest(app, now)
    with app.sessions() as session, session.begin():
        row = queue_email(session, app, dedupe_key=f"digest:{manager}:{digest.period}",
                          template="digest", to=[manager],
                          subject=f"Support digest {digest.period}: {len(digest.breaches)} "
                                  f"breaches, {len(digest.at_risk)} at risk, "
                                  f"{len(digest.open_p1)} open P1",
                          context={"d": digest}, now=now)
        return row.id if row is not None else None


def due_digests(app: App) -> list[int]:
    """Scheduler job: after the digest time each period, queue every manager's digest."""
    from postdesk.storage.models import Outbox

    ids = []
    period, _ = period_start(app, app.now())
    for manager in app.config.digest.managers:
        with app.sessions() as session:
            if session.scalar(select(Outbox.id).where(
                    Outbox.dedupe_key == f"digest:{manager}:{period}")) is not None:
                continue
        outbox_id = queue_digest(app, manager, app.now())
        if outbox_id is not None:
            ids.append(outbox_id)
            app.enqueue_outbox(outbox_id)
    return ids
