"""``postdesk status``: is this desk working, and if not, which part is not?

Each check reads (never writes) and yields a section of the report plus its verdict:
``healthy``; ``degraded`` (running, but mail waits: a backlog older than
``scheduler.sweep_grace``, a scheduler that has stopped running its duties); or
``unreachable`` (the database, the broker or the SMTP port cannot be reached). The exit
status is the worst verdict: 0, 1 or 2. ``--component`` runs only what one process needs,
for container health checks."""

from __future__ import annotations

import contextlib
import logging
import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from postdesk.clock import SystemClock
from postdesk.storage.db import make_engine, make_session_factory
from postdesk.storage.migrate import current_revision, head_revision
from postdesk.storage.models import (
    DutyRun,
    Lease,
    Outbox,
    OutboxStatus,
    RawMessage,
    RawStatus,
)
from postdesk.storage.spool import SPOOL_FILE, Spool
from postdesk.workflow.desk.lease import SCHEDULER_LEASE, default_holder
from postdesk.workflow.desk.mailboxes import mailbox_health
from postdesk.workflow.rules.clock import Clock
from postdesk.workflow.rules.config import Config

HEALTHY, DEGRADED, UNREACHABLE = "healthy", "degraded", "unreachable"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNREACHABLE: 2}
COMPONENTS = ("smtp", "worker", "scheduler", "imap")
CONNECT_TIMEOUT_S = 5.0


@dataclass
class Report:
    sections: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (verdict, part, why)

    def problem(self, verdict: str, part: str, why: str) -> None:
        self.problems.append((verdict, part, why))

    @property
    def verdict(self) -> str:
        verdicts = {v for v, _, _ in self.problems}
        return next((v for v in (UNREACHABLE, DEGRADED) if v in verdicts), HEALTHY)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def as_json(self) -> dict[str, Any]:
        return {"status": self.verdict,
                "problems": [{"status": v, "component": part, "detail": why}
                             for v, part, why in self.problems],
                **self.sections}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _age_s(now: datetime, since: datetime | None) -> float | None:
    return round((now - since).total_seconds(), 1) if since else None


# --- reachability -------------------------------------------------------------------------

def check_broker(url: str) -> str | None:
    """None when the broker answers; otherwise why not. ``stub://`` lives in the process."""
    scheme = urlsplit(url).scheme
    try:
        if scheme.startswith("redis"):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                          socket_timeout=CONNECT_TIMEOUT_S)
            try:
                client.ping()
            finally:
                client.close()
        elif scheme.startswith("amqp"):
            import pika  # type: ignore[import-untyped]

            params = pika.URLParameters(url)
            params.socket_timeout = CONNECT_TIMEOUT_S
            params.connection_attempts = 1
            params.blocked_connection_timeout = CONNECT_TIMEOUT_S
            pika.BlockingConnection(params).close()
    except Exception as exc:   # each client has its own error tree; all mean "not reachable"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def check_smtp_port(host: str, port: int) -> str | None:
    """None when our own SMTP server answers NOOP with 250."""
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        with smtplib.SMTP(target, port, local_hostname="localhost",
                          timeout=CONNECT_TIMEOUT_S) as smtp:
            code, _ = smtp.noop()
    except (OSError, smtplib.SMTPException) as exc:
        return f"{target}:{port}: {exc}"
    return None if code == 250 else f"{target}:{port}: NOOP answered {code}"


def check_smarthost(config: Config) -> str | None:
    """None when the smarthost answers EHLO; the login is not tried (no password here)."""
    out = config.smtp_out
    assert out is not None
    try:
        cls = smtplib.SMTP_SSL if out.ssl else smtplib.SMTP
        with cls(out.host, out.port, local_hostname="localhost",
                 timeout=CONNECT_TIMEOUT_S) as smtp:
            code, _ = smtp.ehlo()
    except (OSError, smtplib.SMTPException) as exc:
        return f"{out.host}:{out.port}: {exc}"
    return None if code == 250 else f"{out.host}:{out.port}: EHLO answered {code}"


# --- what the database says ---------------------------------------------------------------

def backlog(session: Session, now: datetime) -> dict[str, Any]:
    pending, oldest = session.execute(
        select(func.count(), func.min(RawMessage.received_at))
        .where(RawMessage.status == RawStatus.PENDING)).one()
    by_status = dict(session.execute(
        select(Outbox.status, func.count())
        .where(Outbox.status.in_((OutboxStatus.DRAFT, OutboxStatus.QUEUED,
                                  OutboxStatus.SENDING, OutboxStatus.FAILED,
                                  OutboxStatus.BOUNCED)))
        .group_by(Outbox.status)).all())
    oldest_queued = session.scalar(
        select(func.min(Outbox.created_at))
        .where(Outbox.status.in_((OutboxStatus.DRAFT, OutboxStatus.QUEUED))))
    return {
        "raw_pending": {"count": pending, "oldest_received_at": _iso(oldest),
                        "oldest_age_s": _age_s(now, oldest)},
        "outbox": {"queued": by_status.get(OutboxStatus.QUEUED, 0)
                   + by_status.get(OutboxStatus.DRAFT, 0),
                   "sending": by_status.get(OutboxStatus.SENDING, 0),
                   "failed": by_status.get(OutboxStatus.FAILED, 0),
                   "bounced": by_status.get(OutboxStatus.BOUNCED, 0),
                   "oldest_queued_at": _iso(oldest_queued),
                   "oldest_queued_age_s": _age_s(now, oldest_queued)},
    }


def quarantine_last_day(session: Session, now: datetime) -> dict[str, int]:
    rows = session.execute(
        select(RawMessage.reason, func.count())
        .where(RawMessage.status == RawStatus.QUARANTINED,
               RawMessage.processed_at >= now - timedelta(hours=24))
        .group_by(RawMessage.reason).order_by(RawMessage.reason)).all()
    return {str(reason): count for reason, count in rows}


def scheduler_state(session: Session, now: datetime) -> dict[str, Any]:
    lease = session.get(Lease, SCHEDULER_LEASE)
    duties = {run.duty: {"holder": run.holder, "started_at": _iso(run.started_at),
                         "finished_at": _iso(run.finished_at),
                         "age_s": _age_s(now, run.finished_at), "error": run.error}
              for run in session.scalars(select(DutyRun).order_by(DutyRun.duty))}
    return {"lease": ({"holder": lease.holder, "expires_at": _iso(lease.expires_at),
                       "expired": lease.expires_at <= now} if lease else None),
            "duties": duties}


def imap_problems(report: Report, mailboxes: list[dict[str, Any]]) -> None:
    """A login or move episode under way makes the desk degraded: mail is waiting on the
    server or stored but not moved. Skipped messages are listed, not a problem: each was
    retried alone, flagged ``$PostdeskFailed`` and the mailbox went on."""
    for box in mailboxes:
        for episode in box["episodes"]:
            report.problem(DEGRADED, "imap",
                           f"{box['mailbox']}: {episode['kind']} failing since "
                           f"{episode['since']}: {episode['error']}")


# --- the report ---------------------------------------------------------------------------

@contextlib.contextmanager
def _engine(config: Config) -> Iterator[Engine]:
    engine = make_engine(config.desk.database_url, lock_timeout_s=CONNECT_TIMEOUT_S)
    try:
        yield engine
    finally:
        engine.dispose()


def _database(report: Report, engine: Engine) -> bool:
    try:
        current, head = current_revision(engine), head_revision()
    except Exception as exc:   # the driver's own errors: refused, auth, no such file
        report.sections["database"] = {"reachable": False}
        report.problem(UNREACHABLE, "database", str(exc).splitlines()[0])
        return False
    report.sections["database"] = {"reachable": True, "revision": current, "latest": head}
    if current != head:
        report.problem(UNREACHABLE, "database",
                       f"schema at {current}, latest is {head}: run `postdesk db upgrade`")
        return False
    return True


def _backlog(report: Report, sessions: sessionmaker[Session], now: datetime,
             grace: timedelta) -> None:
    with sessions() as session:
        report.sections.update(backlog(session, now))
    age = report.sections["raw_pending"]["oldest_age_s"]
    if age is not None and age > grace.total_seconds():
        report.problem(DEGRADED, "worker", f"a raw message has been pending for {age:.0f}s "
                                           f"(longer than scheduler.sweep_grace)")
    queued_age = report.sections["outbox"]["oldest_queued_age_s"]
    if queued_age is not None and queued_age > grace.total_seconds():
        report.problem(DEGRADED, "outbound", f"an email has been queued for {queued_age:.0f}s "
                                             f"(longer than scheduler.sweep_grace)")


def _spool(report: Report, config: Config, now: datetime, grace: timedelta) -> None:
    """Emails serve's SMTP door answered 250 for and the desk has not moved into the
    database yet (SQLite desks; normally none for more than a moment)."""
    path = Path(config.desk.data_dir) / SPOOL_FILE
    if not path.exists():
        return
    spool = Spool(path, spools=False)   # it only counts
    try:
        count, oldest = spool.backlog()
    finally:
        spool.close()
    age = _age_s(now, oldest)
    report.sections["door_spool"] = {"count": count, "oldest_received_at": _iso(oldest),
                                     "oldest_age_s": age}
    if age is not None and age > grace.total_seconds():
        report.problem(DEGRADED, "smtp", f"an email has waited in the SMTP door's spool for "
                                         f"{age:.0f}s: serve is not moving it into the "
                                         f"database (see its log)")


def _scheduler(report: Report, sessions: sessionmaker[Session], now: datetime,
               config: Config) -> None:
    with sessions() as session:
        state = scheduler_state(session, now)
    report.sections["scheduler"] = state
    # Three missed scans (at least five minutes): the scheduler is not running its duties.
    stale_after = max(3 * config.scheduler.scan_interval.as_timedelta().total_seconds(), 300)
    ages = [d["age_s"] for d in state["duties"].values() if d["age_s"] is not None]
    if not ages:
        report.problem(DEGRADED, "scheduler", "no scheduler duty has run yet")
    elif min(ages) > stale_after:
        report.problem(DEGRADED, "scheduler",
                       f"no scheduler duty has run for {min(ages):.0f}s")
    for name, duty in state["duties"].items():
        if duty["error"]:
            report.problem(DEGRADED, "scheduler", f"duty {name} failed: {duty['error']}")


def _broker(report: Report, config: Config) -> None:
    url = config.desk.broker_url
    error = check_broker(url)
    report.sections["broker"] = {"url": _redact_url(url), "reachable": error is None}
    if error:
        report.problem(UNREACHABLE, "broker", f"{_redact_url(url)}: {error}")


def status_report(config: Config, component: str | None = None, *,
                  clock: Clock | None = None,
                  smtp_probe: Callable[[str, int], str | None] = check_smtp_port) -> Report:
    """Everything ``postdesk status`` shows; ``component`` narrows it to one process's
    health: smtp (database, broker, the SMTP port), worker (database, broker, backlog),
    scheduler (database, its duties), imap (database, broker)."""
    report = Report()
    now = (clock or SystemClock()).now()
    report.sections["checked_at"] = now.isoformat()
    report.sections["component"] = component
    with _engine(config) as engine:
        db_ok = _database(report, engine)
        if component != "scheduler":
            _broker(report, config)
        if component == "smtp":
            error = smtp_probe(config.smtp_in.host, config.smtp_in.port)
            report.sections["smtp"] = {"port": config.smtp_in.port, "answering": error is None}
            if error:
                report.problem(UNREACHABLE, "smtp", error)
        if component is None and config.smtp_out is not None:
            error = check_smarthost(config)
            report.sections["smarthost"] = {"host": config.smtp_out.host,
                                            "reachable": error is None}
            if error:
                report.problem(DEGRADED, "smarthost", error)
        if not db_ok:
            return report
        sessions = make_session_factory(engine)
        grace = config.scheduler.sweep_grace.as_timedelta()
        if component in (None, "worker"):
            _backlog(report, sessions, now, grace)
        if component in (None, "smtp"):
            _spool(report, config, now, grace)
        if component is None:
            with sessions() as session:
                report.sections["quarantine_24h"] = quarantine_last_day(session, now)
        if component in (None, "imap"):
            with sessions() as session:
                mailboxes = mailbox_health(session, [box.name for box in config.imap])
            report.sections["imap"] = mailboxes
            imap_problems(report, mailboxes)
        if component in (None, "scheduler"):
            _scheduler(report, sessions, now, config)
    return report


def render_text(report: Report) -> str:
    data = report.as_json()
    lines = [f"status: {data['status']}"]
    for problem in data["problems"]:
        lines.append(f"  {problem['status']}: {problem['component']}: {problem['detail']}")
    for key in ("database", "broker", "smtp", "smarthost", "door_spool", "raw_pending", "outbox",
                "quarantine_24h"):
        if key in data:
            lines.append(f"{key}: {_flat(data[key])}")
    if "scheduler" in data:
        lease = data["scheduler"]["lease"]
        lines.append(f"scheduler lease: {lease['holder'] if lease else 'none'}"
                     + (f" (until {lease['expires_at']})" if lease else ""))
        for name, duty in data["scheduler"]["duties"].items():
            outcome = f"failed: {duty['error']}" if duty["error"] else "ok"
            lines.append(f"  {name}: {duty['finished_at']} by {duty['holder']}, {outcome}")
    if "imap" in data:
        if not data["imap"]:
            lines.append("imap: no mailbox has synced")
        for box in data["imap"]:
            lines.append(f"imap {box['mailbox']}: last sync {box['last_sync_at']}, "
                         f"{box['unmoved']['count']} stored but not moved")
            for failed in box["failed_messages"]:
                lines.append(f"  skipped {failed['folder']} uid {failed['uid']} "
                             f"since {failed['since']}: {failed['reason']}")
    return "\n".join(lines)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def record_duty_run(sessions: sessionmaker[Session], duty: str, started_at: datetime,
                    finished_at: datetime, error: BaseException | None) -> None:
    """Write the last run of a scheduler duty. Best effort: two schedulers racing on the
    first insert, or a database blip, must not stop the duties themselves."""
    holder = default_holder()
    detail = (f"{type(error).__name__}: {error}"[:2000]) if error is not None else None
    try:
        with sessions() as session, session.begin():
            row = session.get(DutyRun, duty, with_for_update=True)
            if row is None:
                session.add(DutyRun(duty=duty, holder=holder, started_at=started_at,
                                    finished_at=finished_at, error=detail))
            else:
                row.holder, row.started_at, row.finished_at = holder, started_at, finished_at
                row.error = detail
    except Exception:   # logged, never raised: see above
        logging.getLogger("postdesk.scheduler").warning(
            "could not record the run of duty %s", duty, exc_info=True)
