"""The composition root: one ``App`` builds the desk's parts for a process — config,
clock, database, blob store, secret, calendars, renderer, transport, broker and actors —
and wires them. Everything below the shell receives ``Services`` and ``Dispatch``
instead; nothing outside ``postdesk/`` imports this module."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets as pysecrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from dramatiq import Worker
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from postdesk import observe
from postdesk.clock import SystemClock
from postdesk.ingest.accept import AcceptResult, Envelope, accept
from postdesk.logs import register_secrets
from postdesk.mail.authentication import DnsFunc
from postdesk.mail.render import Renderer
from postdesk.outbound.sender import send_outboxes
from postdesk.outbound.transport import (
    MaildirTransport,
    SmtpTransport,
    TemporaryFailure,
    Transport,
)
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import desk_engine, make_session_factory
from postdesk.storage.directory import sync_from_config
from postdesk.storage.migrate import upgrade
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.sla_clocks import ClockKeeper
from postdesk.workflow.pipeline.process import process_inbound
from postdesk.workflow.rules.allowance import format_hours
from postdesk.workflow.rules.clock import Clock
from postdesk.workflow.rules.config import Config, secret_from_env
from postdesk.workflow.rules.sla import build_calendars
from postdesk.workflow.tasks.actors import Actors, register_actors
from postdesk.workflow.tasks.broker import make_broker

log = logging.getLogger("postdesk")


class ActorDispatch:
    """``Dispatch`` over the App's actors. The rows are already committed, so a broker
    that is down loses nothing: the scheduler's sweeper re-enqueues what is left."""

    def __init__(self, actors: Actors):
        self.actors = actors

    def inbound(self, raw_id: int) -> None:
        try:
            self.actors.process_inbound.send(raw_id)
        except Exception as exc:
            log.warning("could not enqueue raw message %s (sweeper will retry): %s", raw_id, exc)

    def outbox(self, *outbox_ids: int) -> None:
        if not outbox_ids:
            return
        try:
            self.actors.send_outbox.send(
                outbox_ids[0] if len(outbox_ids) == 1 else list(outbox_ids))
        except Exception as exc:
            log.warning("could not enqueue outbox %s (sweeper will retry): %s",
                        ", ".join(map(str, outbox_ids)), exc)


class App:
    def __init__(self, config: Config, *, clock: Clock | None = None,
                 worker_timeout_ms: int = 200):
        """``worker_timeout_ms``: how long an idle worker thread or consumer waits for a
        message before it looks again (and sees a stop request): a stop takes up to twice
        that, and an idle Redis consumer backs off up to it between fetches."""
        self.config = config
        self.worker_timeout_ms = worker_timeout_ms
        self.clock = clock or SystemClock()
        self.data_dir = Path(config.desk.data_dir)
        # Raw mail, attachments and the secret live here: owner only. (exist_ok: the
        # processes of a new deployment start together, and all may find it missing.)
        self.data_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.engine = desk_engine(config)
        self.sessions = make_session_factory(self.engine)
        self.services = Services(
            config=config, clock=self.clock, sessions=self.sessions,
            blobs=BlobStore.of_desk(self.data_dir), secret=self._load_secret(),
            calendars=build_calendars(config),
            renderer=Renderer(self.data_dir / "templates",
                              template_globals={"hours": format_hours}))
        register_secrets(config, self.services.secret)
        self.transport = self._make_transport()
        self.broker = make_broker(config.desk.broker_url)
        self.actors = register_actors(self.broker, config.desk.queue_namespace,
                                      on_inbound=self.handle_inbound,
                                      on_outbox=self.handle_outbox)
        self.dispatch = ActorDispatch(self.actors)
        self._worker: Worker | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: Config, *, clock: Clock | None = None) -> Iterator[App]:
        app = cls(config, clock=clock)
        try:
            yield app
        finally:
            app.close()

    # --- the actor bodies ----------------------------------------------------------------
    def handle_inbound(self, raw_id: int) -> None:
        started = time.perf_counter()
        result = process_inbound(self.services, raw_id)
        if result is not None:
            observe.inbound(self.services, raw_id, result, time.perf_counter() - started)
            self.dispatch.outbox(*result.outbox_ids)   # one send job for the email's mail

    def handle_outbox(self, outbox_ids: list[int]) -> None:
        """One send job: its emails, each sent once; then the job fails with the first
        temporary failure, for Dramatiq to retry it (what was sent is then a no-op)."""
        deliveries = send_outboxes(self.services, self.transport, outbox_ids)
        retry: TemporaryFailure | None = None
        for outbox_id, delivery in deliveries.items():
            # Not a redelivered job that found the email done: that was told already.
            if delivery.outcome in ("sent", "failed", "retry"):
                observe.outbound(self.services, outbox_id, delivery.outcome,
                                 template=delivery.template, recipient=delivery.recipient)
            retry = retry or delivery.retry
        if retry is not None:
            raise retry

    # --- setup ---------------------------------------------------------------------------
    def _load_secret(self) -> bytes:
        """The HMAC key. From config/env when given; otherwise generated once and kept in
        data_dir so the embedded default works with no setup."""
        if self.config.desk.secret:
            return self.config.desk.secret.encode()
        path = self.data_dir / "secret.key"
        if path.exists():
            return path.read_bytes().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written whole under a name of this process's, then published by a hard link,
        # which fails if another process started at the same time published first: then
        # its key is the desk's. So no process reads a key half written, and all agree.
        key = pysecrets.token_hex(32).encode()
        draft = path.with_name(f".secret.key.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(draft, path)
            except FileExistsError:
                return path.read_bytes().strip()
        finally:
            draft.unlink(missing_ok=True)
        return key

    def _make_transport(self) -> Transport:
        out = self.config.smtp_out
        if out is None:
            return MaildirTransport(self.data_dir / "outbox")
        return SmtpTransport(out.host, out.port, starttls=out.starttls, use_ssl=out.ssl,
                             username=out.username, password=secret_from_env(out.password_env),
                             timeout=out.timeout)

    def upgrade_database(self) -> None:
        upgrade(self.engine)

    def sync_directory(self) -> None:
        # Processes started together (smtp, workers, scheduler) sync the same rows; the
        # one that loses the race on a unique key syncs again and finds them in place.
        for attempt in range(3):
            try:
                with self.sessions() as session, session.begin():
                    sync_from_config(session, self.config)
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    # --- the ingest door -----------------------------------------------------------------
    def accept(self, raw: bytes, envelope: Envelope, source: str, *, notify: bool = True,
               enqueue: bool = True) -> AcceptResult:
        started = time.perf_counter()
        result = accept(self.sessions, self.services.blobs, raw, envelope, source,
                        now=self.clock.now(), notify=notify,
                        row_limit=self.config.desk.raw_in_database_bytes)
        if enqueue and result.status == "pending":
            self.dispatch.inbound(result.raw_id)
        observe.accepted(result.raw_id, result.created, source, time.perf_counter() - started)
        return result

    # --- workers -------------------------------------------------------------------------
    def start_workers(self, threads: int | None = None) -> Worker:
        worker = Worker(self.broker, worker_threads=threads or self.config.desk.worker_threads,
                        worker_timeout=self.worker_timeout_ms)
        # Dramatiq's default prefetch (threads x 2) starves a Redis worker (~400 msg/s vs
        # ~3,200 with 64); it is only settable as an attribute or env var.
        worker.queue_prefetch = self.config.desk.worker_prefetch
        worker.start()
        self._worker = worker
        return self._worker

    def stop_workers(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def close(self) -> None:
        self.stop_workers()
        with contextlib.suppress(Exception):  # a broker never connected has nothing to close
            self.broker.close()
        self.engine.dispose()

    # --- conveniences for the CLI and tests ----------------------------------------------
    @property
    def blobs(self) -> BlobStore:
        return self.services.blobs

    @property
    def secret(self) -> bytes:
        return self.services.secret

    @property
    def renderer(self) -> Renderer:
        return self.services.renderer

    @property
    def dkim_dns(self) -> DnsFunc | None:
        return self.services.dkim_dns

    @dkim_dns.setter
    def dkim_dns(self, value: DnsFunc | None) -> None:
        self.services.dkim_dns = value

    def now(self) -> datetime:
        return self.clock.now()

    def keeper(self, session: Session) -> ClockKeeper:
        return self.services.clocks(session)

    def enqueue_inbound(self, raw_id: int) -> None:
        self.dispatch.inbound(raw_id)

    def enqueue_outbox(self, outbox_id: int) -> None:
        self.dispatch.outbox(outbox_id)
