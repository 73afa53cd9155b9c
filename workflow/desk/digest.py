"""The manager's digest: breaches since the last digest, tickets at risk now, open P1s,
SLA compliance per client and priority this month, allowance use per client.

Built per manager per period and queued under a key naming both, so a digest is never
sent twice (two schedulers, a re-run of `postdesk digest`). Periods and "this month" are
the desk's own dates, so they are counted in the desk's zone (``rules.zones.desk_zone``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Outbox
from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.reports import Digest, build_report
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.digest_period import (
    DueDigest,
    digest_calendar,
    due_digest,
    latest_slot,
    previous_slot,
)
from postdesk.workflow.rules.zones import desk_zone

__all__ = ["Digest", "build_digest", "digest_key", "due_digests", "period_start",
           "queue_digest"]


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
    """This period's digest: the figures are ``desk.reports``. ``due``: the period the
    scheduler found due (a missed digest covers the gap)."""
    period, since = (due.period, due.since) if due else period_start(services.config, now)
    return build_report(services, now, period, since)


def digest_key(manager: str, period: str) -> str:
    return f"digest:{manager}:{period}"


def digest_subject(digest: Digest) -> str:
    return (f"Support digest {digest.period}: {len(digest.breaches)} breaches, "
            f"{len(digest.at_risk)} at risk, {len(digest.open_p1)} open P1")


def queue_digest(services: Services, dispatch: Dispatch, manager: str, now: datetime,
                 due: DueDigest | None = None) -> int | None:
    """Queue this period's digest for a manager and, once committed, render it and hand
    it to ``dispatch``; returns its outbox id, or None when it was queued before."""
    digest = build_digest(services, now, due)
    with services.sessions() as session, session.begin():
        writer = OutboxWriter(session, services, now=now)
        writer.queue(dedupe_key=digest_key(manager, digest.period),
                     template="digest", to=[manager],
                     subject=digest_subject(digest),
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
