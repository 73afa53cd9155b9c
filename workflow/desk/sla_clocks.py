"""SLA clock lifecycle on a ticket (database side): start, pause, resume, stop, restart,
recompute on priority change. The arithmetic is in ``workflow.sla`` and the calendar.

Each run of a target is one ``sla_clocks`` row; ``next_update`` and ``followup`` restart
as a new cycle, so "alerted once" is per cycle and history stays readable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from postdesk.storage.models import SlaClock, SlaPause, Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.rows import insert_all_now
from postdesk.workflow.rules.calendar import BusinessCalendar
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.durations import Duration
from postdesk.workflow.rules.sla import (
    Span,
    Target,
    due_at,
    paused_business_time,
    risk_at,
    target_for,
    targets_for,
)

Calendars = Mapping[str, BusinessCalendar]

# Built once: building a statement costs more than running it on SQLite.
_RUNNING = (select(SlaClock).where(SlaClock.ticket_id == bindparam("ticket_id"),
                                   SlaClock.stopped_at.is_(None)).order_by(SlaClock.id))
_RUNNING_OF = _RUNNING.where(SlaClock.target == bindparam("target"))
_LAST_CYCLES = (select(SlaClock.target, func.max(SlaClock.cycle))
                .where(SlaClock.ticket_id == bindparam("ticket_id"),
                       SlaClock.target.in_(bindparam("kinds", expanding=True)))
                .group_by(SlaClock.target))


class ClockKeeper:
    def __init__(self, session: Session, config: Config, calendars: Calendars):
        self.session, self.config, self.calendars = session, config, calendars

    # --- queries ----------------------------------------------------------------------
    def running(self, ticket: Ticket, target: str | None = None) -> list[SlaClock]:
        """The ticket's running clocks (of ``target``), oldest first, as this
        transaction sees them — without flushing it: the rows read are filtered by their
        in-memory state (a clock stopped here and not yet written is not running), and
        the clocks started here and not yet written are added, in the order started."""
        session = self.session
        with session.no_autoflush:
            if target:
                stored = session.scalars(_RUNNING_OF, {"ticket_id": ticket.id,
                                                       "target": target})
            else:
                stored = session.scalars(_RUNNING, {"ticket_id": ticket.id})
            clocks = [c for c in stored if c.stopped_at is None]
        clocks += [c for c in self._pending(ticket)
                   if c.stopped_at is None and (not target or c.target == target)]
        return clocks

    def _pending(self, ticket: Ticket) -> list[SlaClock]:
        """Clocks of the ticket added to the session and not yet written."""
        return [c for c in self.session.new
                if isinstance(c, SlaClock) and c.ticket_id == ticket.id]

    def plan_of(self, ticket: Ticket):  # type: ignore[no-untyped-def]
        return self.config.plans[ticket.org.plan]

    # --- lifecycle --------------------------------------------------------------------
    def start(self, ticket: Ticket, target: Target, at: datetime,
              cycle: int | None = None) -> SlaClock:
        """A new run of ``target``; ``cycle`` when the caller already knows it. Added to
        the session, not flushed: it is written with the rest of the transaction (any
        query of the session sees it first)."""
        if cycle is None:
            cycle = self._next_cycles(ticket, target.kind).get(target.kind, 0)
        clock = self._new_clock(ticket, target, at, cycle)
        self.session.add(clock)
        return clock

    def _new_clock(self, ticket: Ticket, target: Target, at: datetime, cycle: int
                   ) -> SlaClock:
        clock = SlaClock(ticket_id=ticket.id, target=target.kind, cycle=cycle,
                         calendar=target.calendar_name, target_days=target.duration.days,
                         target_seconds=target.duration.seconds, started_at=at,
                         paused_business_seconds=0,
                         paused_since=at if ticket.status == "pending" else None,
                         due_at=at, risk_at=None,
                         # Set, not left to the database: a clock written at once
                         # (``start_ticket``) would load them from it when read.
                         stopped_at=None, at_risk_at=None, breached_at=None)
        self._schedule(clock)
        return clock

    def start_ticket(self, ticket: Ticket, at: datetime, *, fresh: bool = False
                     ) -> list[SlaClock]:
        """A new ticket: first response and resolution clocks (next_update starts with
        the first public update); returns them. ``fresh``: the ticket was created in this
        transaction, so no clock has run on it before (no query for earlier cycles), and
        its clocks are written at once (``rows.insert_all_now``)."""
        targets = [t for t in targets_for(self.plan_of(ticket), ticket.priority)
                   if t.kind != "next_update"]
        if fresh:
            clocks = [self._new_clock(ticket, target, at, 0) for target in targets]
            insert_all_now(self.session, clocks)
            return clocks
        cycles = self._next_cycles(ticket, *(t.kind for t in targets)) if targets else {}
        return [self.start(ticket, target, at, cycle=cycles.get(target.kind, 0))
                for target in targets]

    def stop(self, ticket: Ticket, target: str, at: datetime) -> list[SlaClock]:
        clocks = self.running(ticket, target)
        for clock in clocks:
            clock.stopped_at = at
        return clocks

    def stop_all(self, ticket: Ticket, at: datetime) -> None:
        for clock in self.running(ticket):
            clock.stopped_at = at

    def public_update(self, ticket: Ticket, at: datetime) -> None:
        """A public staff reply: stops the first-response clock, restarts next_update."""
        if ticket.first_responded_at is None:
            ticket.first_responded_at = at
        ticket.last_public_update_at = at
        self.stop(ticket, "first_response", at)
        for clock in self.running(ticket, "followup"):
            if clock.started_at < at:   # a follow-up promised in this very reply stands
                clock.stopped_at = at
        self.stop(ticket, "next_update", at)
        if ticket.status not in ("resolved", "closed"):
            target = target_for(self.plan_of(ticket), ticket.priority, "next_update")
            if target:
                self.start(ticket, target, at)

    def pause(self, ticket: Ticket, at: datetime) -> None:
        """The ticket's clocks stand still from ``at``: one open pause span for the
        ticket; each running clock is marked paused (the scan skips it)."""
        if self._open_pause(ticket) is None:
            self.session.add(SlaPause(ticket_id=ticket.id, started_at=at, ended_at=None))
        for clock in self.running(ticket):
            if clock.paused_since is None:
                clock.paused_since = at

    def resume(self, ticket: Ticket, at: datetime) -> None:
        """The pause ends at ``at``; each clock's due and at-risk instants are computed
        again from its start with every pause span of the ticket."""
        span = self._open_pause(ticket)
        if span is not None:
            span.ended_at = at
        pauses = self.pauses(ticket)
        for clock in self.running(ticket):
            if clock.paused_since is None:
                continue
            if span is None:
                # A pause from before spans were kept: keep the one measure we have.
                calendar = self.calendars[clock.calendar]
                clock.paused_business_seconds += int(
                    calendar.elapsed(clock.paused_since, at).total_seconds())
            clock.paused_since = None
            self._schedule(clock, pauses)

    def pauses(self, ticket: Ticket) -> list[Span]:
        """The ticket's finished pause spans (a running pause has no length yet)."""
        with self.session.no_autoflush:
            stored = list(self.session.scalars(
                select(SlaPause).where(SlaPause.ticket_id == ticket.id)))
        stored += [p for p in self.session.new
                   if isinstance(p, SlaPause) and p.ticket_id == ticket.id]
        return [(p.started_at, p.ended_at) for p in dict.fromkeys(stored)
                if p.ended_at is not None]

    def _open_pause(self, ticket: Ticket) -> SlaPause | None:
        for pause in self.session.new:
            if isinstance(pause, SlaPause) and pause.ticket_id == ticket.id \
                    and pause.ended_at is None:
                return pause
        with self.session.no_autoflush:
            return self.session.scalars(
                select(SlaPause).where(SlaPause.ticket_id == ticket.id,
                                       SlaPause.ended_at.is_(None))
                .order_by(SlaPause.id.desc()).limit(1)).first()

    def reprioritise(self, ticket: Ticket, at: datetime) -> None:
        """Priority changed: recompute every running clock from its start with the new
        priority's target; start targets the new priority has and stop those it lacks."""
        plan = self.plan_of(ticket)
        running = {c.target: c for c in self.running(ticket)}
        pauses = self.pauses(ticket) if running else []
        wanted = {t.kind: t for t in targets_for(plan, ticket.priority)}
        for kind, clock in running.items():
            if kind == "followup":
                continue
            target = wanted.get(kind)
            if target is None:
                clock.stopped_at = at
                continue
            clock.calendar = target.calendar_name
            clock.target_days, clock.target_seconds = (target.duration.days,
                                                       target.duration.seconds)
            self._schedule(clock, pauses)
        for kind, target in wanted.items():
            if kind in running:
                continue
            if kind == "first_response" and ticket.first_responded_at is not None:
                continue
            if kind == "next_update":
                if ticket.last_public_update_at is None:
                    continue
                # Count the gap from the last public update, as if the target had applied.
                self.start(ticket, target, ticket.last_public_update_at)
            elif kind in ("first_response", "resolution") and not self._ever(ticket, kind):
                self.start(ticket, target, ticket.created_at)

    def followup(self, ticket: Ticket, due: datetime, at: datetime) -> SlaClock:
        """A staff commitment ("I'll update you by ..."): a clock with a fixed due time."""
        self.stop(ticket, "followup", at)
        target = Target("followup", Duration(), "always")
        clock = self.start(ticket, target, at)
        clock.due_at = due
        clock.risk_at = at + (due - at) * self.config.scheduler.at_risk
        return clock

    def _next_cycles(self, ticket: Ticket, *kinds: str) -> dict[str, int]:
        """The next cycle number of each target kind that has run on the ticket before
        (one query for all of them, plus the clocks started here not yet written)."""
        rows = self.session.connection().execute(
            _LAST_CYCLES, {"ticket_id": ticket.id, "kinds": list(kinds)})
        cycles = {target: cycle + 1 for target, cycle in rows}
        for clock in self._pending(ticket):
            if clock.target in kinds:
                cycles[clock.target] = max(cycles.get(clock.target, 0), clock.cycle + 1)
        return cycles

    def _ever(self, ticket: Ticket, kind: str) -> bool:
        return self.session.scalar(select(SlaClock.id).where(
            SlaClock.ticket_id == ticket.id, SlaClock.target == kind).limit(1)) is not None

    def _schedule(self, clock: SlaClock, pauses: Sequence[Span] = ()) -> None:
        """Due and at-risk instants from the clock's start on its (current) calendar,
        each pause span measured on that calendar. ``pauses`` may be all the ticket's
        spans: those before the clock started are clipped away by the rule."""
        if clock.target == "followup":
            return
        calendar = self.calendars[clock.calendar]
        target = Duration(days=clock.target_days, seconds=clock.target_seconds)
        if not pauses and clock.paused_business_seconds:
            # Paused before spans were kept (no span recorded): the stored measure.
            pauses = [(clock.started_at, calendar.add(
                clock.started_at, Duration(seconds=clock.paused_business_seconds)))]
        clock.due_at = due_at(calendar, clock.started_at, target, pauses)
        clock.risk_at = risk_at(calendar, clock.started_at, target,
                                self.config.scheduler.at_risk, pauses)
        clock.paused_business_seconds = int(paused_business_time(
            calendar, clock.started_at, clock.due_at, pauses).total_seconds())


def set_status(keeper: ClockKeeper, ticket: Ticket, status: str, at: datetime,
               actor: str) -> bool:
    """Move a ticket to ``status`` with the clock effects of the move. Returns False when
    it was already there."""
    old = ticket.status
    if old == status:
        return False
    if old == "pending":
        keeper.resume(ticket, at)
        ticket.paused_since = None
    if status == "pending":
        keeper.pause(ticket, at)
        # When it started waiting on the client: the pending reminder counts from here.
        ticket.paused_since = at
    if status in ("resolved", "closed"):
        keeper.stop_all(ticket, at)
        if status == "resolved":
            ticket.resolved_at = at
        else:
            ticket.closed_at = at
    if old in ("resolved", "closed") and status not in ("resolved", "closed"):
        # Reopened: the client is waiting again; a fresh resolution run and, once staff
        # answer, next-update cycles.
        ticket.resolved_at = ticket.closed_at = None
        target = target_for(keeper.plan_of(ticket), ticket.priority, "resolution")
        if target:
            keeper.start(ticket, target, at)
    ticket.status = status
    ticket.updated_at = at
    add_event(keeper.session, ticket, "status_changed", at, actor, old=old, new=status)
    return True
