"""Breach detection, run by the scheduler every ``scan_interval``.

Two indexed queries (partial indexes on ``risk_at`` / ``due_at`` over running clocks)
find clocks that crossed their at-risk point or their due time. Each crossing is claimed
with a conditional UPDATE (``... WHERE at_risk_at IS NULL``): only the scheduler whose
UPDATE changed the row records the event and queues the alert, in the same transaction,
so two schedulers running at once still alert exactly once. The alerts are drafts in
that transaction; they are rendered and handed to the sender after it commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Select, func, select, update
from sqlalchemy.orm import Session

from postdesk.storage.models import SlaClock, Staff, Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.desk.staff_thread import staff_thread_root
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.rota import on_rota
from postdesk.workflow.rules.zones import desk_zone

BATCH = 500


def at_risk_query(now: datetime) -> Select[int]:
    """Clocks past their at-risk point and not yet due: a clock already past due gets
    its breach alert only, never "at risk" and "breached" in the same scan."""
    return (select(SlaClock.id)
            .where(SlaClock.stopped_at.is_(None), SlaClock.paused_since.is_(None),
                   SlaClock.at_risk_at.is_(None), SlaClock.risk_at <= now,
                   SlaClock.due_at > now)
            .order_by(SlaClock.risk_at).limit(BATCH))


def breached_query(now: datetime) -> Select[int]:
    return (select(SlaClock.id)
            .where(SlaClock.stopped_at.is_(None), SlaClock.paused_since.is_(None),
                   SlaClock.breached_at.is_(None), SlaClock.due_at <= now)
            .order_by(SlaClock.due_at).limit(BATCH))


@dataclass
class ScanResult:
    at_risk: int = 0
    breached: int = 0
    # (kind, priority) of each crossing claimed, for the metrics by priority.
    crossings: list[tuple[str, str]] = field(default_factory=list)


def scan(services: Services, dispatch: Dispatch, now: datetime | None = None) -> ScanResult:
    """One scan: claim each crossing, record it and queue its alerts (one transaction per
    clock), then render the alerts and hand them to ``dispatch``."""
    now = now or services.now()
    result = ScanResult()
    outbox_ids: list[int] = []
    for kind, query, column in (("at_risk", at_risk_query(now), SlaClock.at_risk_at),
                                ("breached", breached_query(now), SlaClock.breached_at)):
        with services.sessions() as session:
            ids = list(session.scalars(query))
        for clock_id in ids:
            with services.sessions() as session, session.begin():
                # Session.execute is typed as returning a plain Result, but an UPDATE
                # returns a CursorResult, which has the rowcount.
                claim = (update(SlaClock)
                         .where(SlaClock.id == clock_id, column.is_(None),
                                SlaClock.stopped_at.is_(None),
                                SlaClock.paused_since.is_(None)))
                if kind == "at_risk":
                    claim = claim.where(SlaClock.due_at > now).values(at_risk_at=now)
                else:
                    # A breach also settles the at-risk crossing, so a clock whose due
                    # moves later (a pause after the breach) is never "at risk" after it.
                    claim = claim.values(breached_at=now, at_risk_at=func.coalesce(
                        SlaClock.at_risk_at, now))
                won = cast(CursorResult[Any], session.execute(claim)).rowcount
                if not won:
                    continue  # another scheduler claimed it, or it stopped meanwhile
                clock = session.get_one(SlaClock, clock_id)
                ticket = session.get_one(Ticket, clock.ticket_id)
                writer = OutboxWriter(session, services, now=now)
                _alert(services.config, session, writer, ticket, clock, kind, now)
                priority = ticket.priority
            # Committed: the drafts are safe; a crash from here on leaves them to the
            # scheduler's sweeper (``stale_draft_ids``).
            outbox_ids += writer.queued_ids
            setattr(result, kind, getattr(result, kind) + 1)
            result.crossings.append((kind, priority))
    release_drafts(services, dispatch, outbox_ids)
    return result


def _alert(config: Config, session: Session, writer: OutboxWriter, ticket: Ticket,
           clock: SlaClock, kind: str, now: datetime) -> None:
    prefix = config.desk.ticket_prefix
    event = "sla_at_risk" if kind == "at_risk" else "sla_breached"
    if clock.target == "followup":
        event = "followup_due_soon" if kind == "at_risk" else "followup_missed"
    add_event(session, ticket, event, now, target=clock.target, cycle=clock.cycle,
              due_at=clock.due_at.isoformat())
    recipients = alert_recipients(config, session, ticket, clock, kind, now)
    ref = ticket_ref(prefix, ticket.id)
    template = {"sla_at_risk": "sla_at_risk", "sla_breached": "sla_breached",
                "followup_due_soon": "followup_reminder",
                "followup_missed": "followup_missed"}[event]
    subject_word = {"sla_at_risk": "SLA at risk", "sla_breached": "SLA BREACHED",
                    "followup_due_soon": "Follow-up due soon",
                    "followup_missed": "Follow-up MISSED"}[event]
    target = clock.target.replace("_", " ")
    for email in recipients:
        root = staff_thread_root(writer.services, ticket.id, email)
        writer.queue(
            dedupe_key=f"{event}:{clock.id}:{email}", template=template, to=[email],
            in_reply_to=root, references=[root],
            subject=f"[{ref}] {subject_word}: {target} ({ticket.priority}) {ticket.subject}",
            ticket=ticket, kind="system", on_ticket=False,
            context={"ref": ref, "target": target, "due_at": clock.due_at,
                     "recipient": email})


def alert_recipients(config: Config, session: Session, ticket: Ticket, clock: SlaClock,
                     kind: str, now: datetime) -> list[str]:
    """At risk: the assignee. Breach: the assignee, and the leads too for P1 breaches and
    missed follow-ups (a broken promise to a client is a lead's business).

    Without an assignee, whoever is on rota: the rota week is the desk's own date, so it
    is read in the desk's zone (a Monday 00:30 in London is still Sunday in UTC)."""
    people: list[str] = []
    assignee = session.get(Staff, ticket.assignee_id) if ticket.assignee_id else None
    if assignee:
        people.append(assignee.email)
    else:
        rota = on_rota(config.rota, now.astimezone(desk_zone(config)).date())
        if rota:
            people.append(rota)
    escalate = kind == "breached" and (ticket.priority == "P1" or clock.target == "followup")
    if escalate or not people:
        people += [s.email for s in config.leads()]
    return list(dict.fromkeys(people))
