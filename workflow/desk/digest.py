"""The manager's digest: breaches since the last digest, tickets at risk now, open P1s,
SLA compliance per client and priority this month, allowance use per client.

Built per manager per period and queued under a key naming both, so a digest is never
sent twice (two schedulers, a re-run of `postdesk digest`). Periods and "this month" are
the desk's own dates, so they are counted in the desk's zone (``rules.zones.desk_zone``)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from sqlalchemy import select

from postdesk.storage.models import Outbox
from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.reports import Digest, build_report
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.zones import desk_zone

__all__ = ["Digest", "build_digest", "digest_key", "due_digests", "period_start",
           "queue_digest"]


def period_start(config: Config, now: datetime) -> tuple[str, datetime]:
    """This period's name and when the previous one ended (digest time, local)."""
    tz = desk_zone(config)
    hh, mm = (int(x) for x in config.digest.at.split(":"))
    local = now.astimezone(tz)
    today_at = datetime.combine(local.date(), time(hh, mm), tz)
    step = timedelta(days=7 if config.digest.period == "weekly" else 1)
    current = today_at if local >= today_at else today_at - timedelta(days=1)
    return current.date().isoformat(), (current - step).astimezone(now.tzinfo)


def build_digest(services: Services, now: datetime) -> Digest:
    """This period's digest: the figures are ``desk.reports``."""
    period, since = period_start(services.config, now)
    return build_report(services, now, period, since)


def digest_key(manager: str, period: str) -> str:
    return f"digest:{manager}:{period}"


def digest_subject(digest: Digest) -> str:
    return (f"Support digest {digest.period}: {len(digest.breaches)} breaches, "
            f"{len(digest.at_risk)} at risk, {len(digest.open_p1)} open P1")


def queue_digest(services: Services, dispatch: Dispatch, manager: str, now: datetime
                 ) -> int | None:
    """Queue this period's digest for a manager and, once committed, render it and hand
    it to ``dispatch``; returns its outbox id, or None when it was queued before."""
    digest = build_digest(services, now)
    with services.sessions() as session, session.begin():
        writer = OutboxWriter(session, services, now=now)
        writer.queue(dedupe_key=digest_key(manager, digest.period),
                     template="digest", to=[manager],
                     subject=digest_subject(digest),
                     context={"d": digest})
    release_drafts(services, dispatch, writer.queued_ids)
    return writer.queued_ids[0] if writer.queued_ids else None


def due_digests(services: Services, dispatch: Dispatch) -> list[int]:
    """Scheduler job: after the digest time each period, queue every manager's digest;
    returns the outbox ids queued."""
    ids = []
    now = services.now()
    period, _ = period_start(services.config, now)
    for manager in services.config.digest.managers:
        with services.sessions() as session:
            if session.scalar(select(Outbox.id).where(
                    Outbox.dedupe_key == digest_key(manager, period))) is not None:
                continue   # cheap check first: building a digest reads a lot
        outbox_id = queue_digest(services, dispatch, manager, now)
        if outbox_id is not None:
            ids.append(outbox_id)
    return ids
