"""The manager's digest: breaches since the last digest, tickets at risk now, open P1s,
SLA compliance per client and priority this month, allowance use per client.

Built per manager per period and queued under a key naming both, so a digest is never
sent twice (two schedulers, a re-run of `postdesk digest`). Periods and "this month" are
the desk's own dates, so they are counted in the desk's zone (``rules.zones.desk_zone``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Event, Org, Outbox, SlaClock, Ticket
from postdesk.workflow.desk.allowance import org_month_balance
from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.rules.allowance import format_hours
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.digest_period import (
    DueDigest,
    digest_calendar,
    due_digest,
    latest_slot,
    previous_slot,
)
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.zones import desk_zone


@dataclass
class Digest:
    """The digest's data. Plain values only: it is the template data of a draft, stored
    as JSON until the draft is rendered (``desk.outbox``)."""

    period: str
    since: datetime
    breaches: list[dict[str, Any]] = field(default_factory=list)
    at_risk: list[dict[str, Any]] = field(default_factory=list)
    open_p1: list[dict[str, Any]] = field(default_factory=list)
    compliance: list[dict[str, Any]] = field(default_factory=list)
    allowance: list[dict[str, Any]] = field(default_factory=list)


def period_start(config: Config, now: datetime) -> tuple[str, datetime]:
    """This period's name and when the previous one began: the latest digest slot on the
    digest calendar (``rules.digest_period``)."""
    calendar = digest_calendar(config)
    slot = latest_slot(config.digest, calendar, now)
    if slot is None:   # a calendar with no open day in a year: name the period by today
        return now.astimezone(desk_zone(config)).date().isoformat(), now
    before = previous_slot(config.digest, calendar, slot)
    return (slot.astimezone(desk_zone(config)).date().isoformat(),
            before if before is not None else slot)


def build_digest(services: Services, now: datetime, due: DueDigest | None = None
                 ) -> Digest:
    """``due``: the period the scheduler found due (a missed digest covers the gap)."""
    config = services.config
    prefix = config.desk.ticket_prefix
    period, since = (due.period, due.since) if due else period_start(config, now)
    digest = Digest(period=period, since=since)
    month_start = now.astimezone(desk_zone(config)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0)
    with services.sessions() as session:
        def row(ticket: Ticket, **extra: Any) -> dict[str, Any]:
            return {"ref": ticket_ref(prefix, ticket.id), "subject": ticket.subject,
                    "org": ticket.org.slug, "priority": ticket.priority,
                    "status": ticket.status, **extra}

        for event in session.scalars(select(Event).where(
                Event.kind == "sla_breached", Event.at >= since).order_by(Event.at)):
            ticket = session.get_one(Ticket, event.ticket_id)
            digest.breaches.append(row(ticket, target=event.data.get("target"),
                                       at=event.at))
        for clock in session.scalars(select(SlaClock).where(
                SlaClock.stopped_at.is_(None), SlaClock.breached_at.is_(None),
                SlaClock.at_risk_at.is_not(None)).order_by(SlaClock.due_at)):
            digest.at_risk.append(row(session.get_one(Ticket, clock.ticket_id),
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
            balance = org_month_balance(session, config, org, now)
            if balance is not None:
                digest.allowance.append({"org": org.slug,
                                         "allowance": format_hours(balance.allowance),
                                         "used": format_hours(balance.used),
                                         "remaining": format_hours(balance.remaining)})
    return digest


def digest_key(manager: str, period: str) -> str:
    return f"digest:{manager}:{period}"


def queue_digest(services: Services, dispatch: Dispatch, manager: str, now: datetime,
                 due: DueDigest | None = None) -> int | None:
    """Queue this period's digest for a manager and, once committed, render it and hand
    it to ``dispatch``; returns its outbox id, or None when it was queued before."""
    digest = build_digest(services, now, due)
    with services.sessions() as session, session.begin():
        writer = OutboxWriter(session, services, now=now)
        writer.queue(dedupe_key=digest_key(manager, digest.period),
                     template="digest", to=[manager],
                     subject=f"Support digest {digest.period}: {len(digest.breaches)} "
                             f"breaches, {len(digest.at_risk)} at risk, "
                             f"{len(digest.open_p1)} open P1",
                     context={"d": digest})
    release_drafts(services, dispatch, writer.queued_ids)
    return writer.queued_ids[0] if writer.queued_ids else None


def last_digest_period(session: Session, manager: str) -> str | None:
    """The period of the last digest queued for ``manager`` (keys end in an ISO date, so
    the greatest key is the latest)."""
    key = session.scalar(select(Outbox.dedupe_key)
                         .where(Outbox.dedupe_key.startswith(digest_key(manager, ""),
                                                             autoescape=True))
                         .order_by(Outbox.dedupe_key.desc()).limit(1))
    return key.rsplit(":", 1)[1] if key else None


def due_digests(services: Services, dispatch: Dispatch) -> list[int]:
    """Scheduler job: queue each manager's digest when one is due on the digest calendar
    (``rules.digest_period``); returns the outbox ids queued."""
    ids = []
    now = services.now()
    calendar = digest_calendar(services.config)
    for manager in services.config.digest.managers:
        with services.sessions() as session:
            # Cheap check first: building a digest reads a lot.
            due = due_digest(services.config.digest, calendar, now,
                             last_digest_period(session, manager))
        if due is None:
            continue
        outbox_id = queue_digest(services, dispatch, manager, now, due)
        if outbox_id is not None:
            ids.append(outbox_id)
    return ids
