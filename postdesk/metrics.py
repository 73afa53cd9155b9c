"""Prometheus metrics (docs/metrics.md): the metric objects, one named function per thing
that happens, and the ``/metrics`` endpoint.

Multi-process: when ``PROMETHEUS_MULTIPROC_DIR`` is set (before the process starts, as
prometheus_client requires), every process on the host writes its samples there and the
process that serves ``/metrics`` aggregates them all; the others find the port taken and
leave serving to it. Without it each process serves only its own samples.

The backlog gauges are read from the database when scraped, so they are right whichever
process serves them."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from postdesk.storage.models import Outbox, RawMessage, RawStatus
from postdesk.workflow.desk.breaches import ScanResult
from postdesk.workflow.rules.clock import Clock
from postdesk.workflow.rules.config import MetricsConfig
from postdesk.workflow.rules.errors import UserError

log = logging.getLogger("postdesk.metrics")

# Seconds: from 5 ms (a lean SMTP accept) to 10 minutes (a backlog behind a broker outage).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600)

EMAILS_ACCEPTED = Counter("postdesk_emails_accepted", "Emails stored by a door (new bytes)",
                          ["source"])
EMAILS_PROCESSED = Counter("postdesk_emails_processed", "Emails processed, by outcome",
                           ["outcome"])
EMAILS_QUARANTINED = Counter("postdesk_emails_quarantined", "Emails quarantined, by reason",
                             ["reason"])
OUTBOUND = Counter("postdesk_outbound_emails", "Outbound send attempts, by result",
                   ["status"])
SLA_AT_RISK = Counter("postdesk_sla_at_risk", "SLA clocks that crossed at_risk",
                      ["priority"])
SLA_BREACHES = Counter("postdesk_sla_breaches", "SLA clocks that breached", ["priority"])
PROCESSING_LATENCY = Histogram("postdesk_processing_latency_seconds",
                               "From accept (250 / IMAP fetch) to processed",
                               buckets=LATENCY_BUCKETS)
SMTP_DATA_TO_250 = Histogram("postdesk_smtp_data_to_250_seconds",
                             "From the end of SMTP DATA to the 250 answer",
                             buckets=LATENCY_BUCKETS)


def _source_kind(source: str) -> str:
    """``imap:support`` -> ``imap``: one label value per door, not per mailbox."""
    return source.split(":", 1)[0]


def email_accepted(source: str, seconds: float | None) -> None:
    """``seconds``: end of DATA to the commit that allows the 250; None when not known
    (an email serve's door spooled and the desk found in the spool, not handed over)."""
    EMAILS_ACCEPTED.labels(source=_source_kind(source)).inc()
    if seconds is not None and _source_kind(source) == "smtp":
        SMTP_DATA_TO_250.observe(seconds)


def email_processed(outcome: str, reason: str | None, latency_s: float | None) -> None:
    EMAILS_PROCESSED.labels(outcome=outcome).inc()
    if outcome == "quarantined":
        EMAILS_QUARANTINED.labels(reason=reason or "unknown").inc()
        if reason == "bounce":
            OUTBOUND.labels(status="bounced").inc()
    if latency_s is not None:
        PROCESSING_LATENCY.observe(max(latency_s, 0.0))


def outbound(status: str) -> None:
    OUTBOUND.labels(status=status).inc()


def observe_duty(duty: str, result: object) -> None:
    """What a scheduler duty did that has a metric: SLA crossings by priority."""
    if isinstance(result, ScanResult):
        for kind, priority in result.crossings:
            (SLA_AT_RISK if kind == "at_risk" else SLA_BREACHES).labels(priority=priority).inc()


class BacklogCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock):
        self.sessions = sessions
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.sessions() as session:
                pending, oldest = session.execute(
                    select(func.count(), func.min(RawMessage.received_at))
                    .where(RawMessage.status == RawStatus.PENDING)).one()
                by_status = session.execute(
                    select(Outbox.status, func.count()).group_by(Outbox.status)).all()
        except Exception:   # a scrape during a database outage: no gauges, not a 500
            log.warning("metrics: cannot read the backlog", exc_info=True)
            return
        yield GaugeMetricFamily("postdesk_raw_pending", "Raw messages waiting to be processed",
                                value=pending)
        age = (self.clock.now() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily("postdesk_raw_pending_oldest_age_seconds",
                                "Age of the oldest pending raw message (0: none)", value=age)
        outbox = GaugeMetricFamily("postdesk_outbox_emails", "Outbox rows by status",
                                   labels=["status"])
        for status, count in by_status:
            outbox.add_metric([status], count)
        yield outbox


def _registry() -> CollectorRegistry:
    """A registry of its own per endpoint: this process's samples (or, in multi-process
    mode, every process's) plus the backlog gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)
    return registry


def start_metrics_server(config: MetricsConfig, sessions: sessionmaker[Session],
                         clock: Clock) -> Any:
    """Serve ``/metrics`` when ``[metrics] port`` is set; returns the server (or None)."""
    if config.port is None:
        return None
    registry = _registry()
    try:
        server, _thread = start_http_server(config.port, addr=config.host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Another process of this host serves the shared samples.
            log.info("metrics: %s:%s is served by another process", config.host, config.port)
            return None
        raise UserError(f"metrics.port: cannot listen on {config.host}:{config.port}: "
                        f"{exc.strerror}") from None
    registry.register(BacklogCollector(sessions, clock))
    log.info("metrics on http://%s:%s/metrics", config.host, server.server_port)
    return server


def stop_metrics_server(server: Any) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
