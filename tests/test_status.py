"""`postdesk status`: healthy, degraded and unreachable, each part alone and the whole
command; the scheduler's duty runs and lease; the IMAP hook."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from postdesk.app import App
from postdesk.cli import main
from postdesk.ingest.accept import Envelope
from postdesk.ingest.smtp import IngestHandler, SmtpServer
from postdesk.ingest.spooled import spool_email
from postdesk.scheduler import Scheduler
from postdesk.status import status_report
from postdesk.storage.blobs import BlobStore
from postdesk.storage.models import (
    DutyRun,
    ImapMailboxState,
    ImapMessageStrike,
    Lease,
    RawMessage,
)
from postdesk.storage.spool import Spool
from postdesk.workflow.rules.clock import ManualClock
from postdesk.workflow.rules.config import parse_config
from tests.support import backend, config_text, free_port, make_email, wait_for


def write_config(tmp_path: Path, be: Any, **kw: Any) -> Path:
    path = tmp_path / "postdesk.toml"
    path.write_text(config_text(be, tmp_path / "data", **kw), encoding="utf-8")
    return path


def status_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["status", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def desk_config(tmp_path: Path) -> Any:
    with backend("sqlite", tmp_path) as be:
        path = write_config(tmp_path, be)
        config = parse_config(path.read_text(), environ={})
        with App.open(config) as app:
            app.upgrade_database()
            app.sync_directory()
        yield path, config, be


def run_scheduler_once(config: Any, clock: Any = None) -> dict[str, object]:
    with App.open(config, clock=clock) as app:
        return Scheduler(app.services, app.dispatch).run_once()


def test_a_healthy_desk_whose_scheduler_ran_exits_0(desk_config, capsys) -> None:
    path, config, _ = desk_config
    run_scheduler_once(config)
    code, report = status_json(capsys, "--config", str(path))
    assert (code, report["status"], report["problems"]) == (0, "healthy", [])
    assert report["database"] == {"reachable": True, "revision": report["database"]["latest"],
                                  "latest": report["database"]["latest"]}
    assert report["scheduler"]["lease"] is None
    assert set(report["scheduler"]["duties"]) >= {"sweep_pending_raw", "sla_scan", "digests"}


def test_the_broker_at_a_closed_port_is_unreachable_and_named(desk_config, tmp_path,
                                                             capsys) -> None:
    path, _, _ = desk_config
    text = path.read_text().replace('broker_url = "stub://"',
                                    f'broker_url = "redis://127.0.0.1:{free_port()}/0"')
    path.write_text(text)
    for component in ([], ["--component", "worker"], ["--component", "smtp"]):
        code, report = status_json(capsys, "--config", str(path), *component)
        assert code == 2
        assert report["status"] == "unreachable"
        assert "broker" in [p["component"] for p in report["problems"]]
        assert report["broker"]["reachable"] is False


def test_a_rabbitmq_broker_at_a_closed_port_is_unreachable_too(desk_config, capsys) -> None:
    path, _, _ = desk_config
    path.write_text(path.read_text().replace(
        'broker_url = "stub://"', f'broker_url = "amqp://guest:guest@127.0.0.1:{free_port()}/"'))
    code, report = status_json(capsys, "--config", str(path), "--component", "worker")
    assert code == 2 and report["problems"][0]["component"] == "broker"
    assert "guest:guest" not in json.dumps(report)   # the password is not printed


def test_a_raw_message_pending_longer_than_sweep_grace_is_degraded(desk_config,
                                                                   capsys) -> None:
    path, config, _ = desk_config
    run_scheduler_once(config)
    old = ManualClock(datetime.now(UTC) - timedelta(minutes=10))   # sweep_grace is 120 s
    with App.open(config, clock=old) as app:
        app.accept(make_email().as_bytes(), Envelope("alice@client.example",
                                                     ["support@desk.example"]),
                   "smtp", enqueue=False)
    code, report = status_json(capsys, "--config", str(path))
    assert code == 1 and report["status"] == "degraded"
    assert report["raw_pending"]["count"] == 1
    assert report["raw_pending"]["oldest_age_s"] > 120
    assert [p["component"] for p in report["problems"]] == ["worker"]
    assert "pending" in report["problems"][0]["detail"]
    code, _ = status_json(capsys, "--config", str(path), "--component", "worker")
    assert code == 1


def test_a_fresh_pending_message_is_not_a_problem(desk_config) -> None:
    _, config, _ = desk_config
    with App.open(config) as app:
        app.accept(make_email().as_bytes(), Envelope("alice@client.example",
                                                     ["support@desk.example"]),
                   "smtp", enqueue=False)
    report = status_report(config, "worker")
    assert report.exit_code == 0 and report.sections["raw_pending"]["count"] == 1


def test_an_email_left_in_the_doors_spool_longer_than_sweep_grace_is_degraded(
        desk_config, capsys) -> None:
    """serve's door answered 250 for it ten minutes ago and the desk never moved it into
    the database (it cannot write there, say): the operator is told, with the age."""
    path, config, _ = desk_config
    run_scheduler_once(config)
    spool = Spool.of_desk(config.desk.data_dir)
    try:
        spool_email(spool, BlobStore.of_desk(config.desk.data_dir), make_email().as_bytes(),
                    Envelope("alice@client.example", ["support@desk.example"]), "smtp",
                    now=datetime.now(UTC) - timedelta(minutes=10), row_limit=256 * 1024)
    finally:
        spool.close()
    code, report = status_json(capsys, "--config", str(path))
    assert code == 1 and report["status"] == "degraded"
    assert report["door_spool"]["count"] == 1
    assert report["door_spool"]["oldest_age_s"] > 120
    assert [p["component"] for p in report["problems"]] == ["smtp"]
    assert "spool for 6" in report["problems"][0]["detail"]
    main(["status", "--config", str(path)])
    assert "door_spool: count=1" in capsys.readouterr().out


def test_an_empty_spool_is_shown_and_is_no_problem(desk_config, capsys) -> None:
    path, config, _ = desk_config
    run_scheduler_once(config)
    Spool.of_desk(config.desk.data_dir).close()     # made by a serve, all moved
    code, report = status_json(capsys, "--config", str(path))
    assert code == 0
    assert report["door_spool"] == {"count": 0, "oldest_received_at": None,
                                    "oldest_age_s": None}


def test_smtp_component_checks_the_configured_port_answers(tmp_path, capsys) -> None:
    with backend("sqlite", tmp_path) as be:
        port = free_port()
        path = write_config(tmp_path, be, smtp_port=port)
        config = parse_config(path.read_text(), environ={})
        with App.open(config) as app:
            app.upgrade_database()
        code, report = status_json(capsys, "--config", str(path), "--component", "smtp")
        assert code == 2 and report["problems"][0]["component"] == "smtp"
        with App.open(config) as app:
            server = SmtpServer("127.0.0.1", port, 100_000,
                                IngestHandler(config.desk.support_addresses, app.accept))
            server.start()
            try:
                code, report = status_json(capsys, "--config", str(path), "--component",
                                           "smtp")
            finally:
                server.stop()
        assert (code, report["smtp"]["answering"]) == (0, True)


def test_an_unreachable_database_exits_2_naming_it(tmp_path, capsys) -> None:
    with backend("sqlite", tmp_path) as be:
        path = write_config(tmp_path, be)
    url = f"postgresql+psycopg://postdesk@127.0.0.1:{free_port()}/postdesk"
    path.write_text(path.read_text().replace(f'database_url = "{be.database_url}"',
                                             f'database_url = "{url}"'))
    code, report = status_json(capsys, "--config", str(path), "--component", "scheduler")
    assert code == 2 and report["problems"][0]["component"] == "database"


def test_the_scheduler_records_each_duty_run_and_a_failure(desk_config) -> None:
    _, config, _ = desk_config
    with App.open(config) as app:
        scheduler = Scheduler(app.services, app.dispatch)

        def broken() -> None:
            raise RuntimeError("disk on fire")

        scheduler.add_job("broken_duty", broken)
        scheduler.run_once()
        with app.sessions() as session:
            runs = {r.duty: r for r in session.scalars(select(DutyRun))}
    assert set(runs) == {name for name, _ in scheduler.jobs}
    assert runs["broken_duty"].error == "RuntimeError: disk on fire"
    assert runs["sla_scan"].error is None
    assert ":" in runs["sla_scan"].holder
    report = status_report(config, "scheduler")
    assert report.exit_code == 1
    assert "broken_duty" in report.problems[0][2]


def test_a_scheduler_that_stopped_running_is_degraded(desk_config) -> None:
    _, config, _ = desk_config
    run_scheduler_once(config, clock=ManualClock(datetime.now(UTC) - timedelta(hours=1)))
    report = status_report(config, "scheduler")
    assert report.exit_code == 1 and "no scheduler duty has run for" in report.problems[0][2]


def test_status_shows_who_holds_the_scheduler_lease(desk_config, capsys) -> None:
    path, config, _ = desk_config
    run_scheduler_once(config)
    until = datetime.now(UTC) + timedelta(minutes=1)
    with App.open(config) as app, app.sessions() as session, session.begin():
        session.add(Lease(name="scheduler", holder="host-a:4242", expires_at=until))
    code, report = status_json(capsys, "--config", str(path), "--component", "scheduler")
    assert code == 0
    assert report["scheduler"]["lease"]["holder"] == "host-a:4242"
    assert report["scheduler"]["lease"]["expired"] is False
    assert main(["status", "--config", str(path)]) == 0
    assert "scheduler lease: host-a:4242" in capsys.readouterr().out


def test_status_shows_each_mailbox_its_skipped_message_and_a_move_episode(desk_config,
                                                                           capsys) -> None:
    path, config, _ = desk_config
    synced = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    with App.open(config) as app, app.sessions() as session, session.begin():
        session.add(ImapMailboxState(
            mailbox="support", last_sync_at=synced, unmoved_count=3,
            unmoved_since=synced, move_failing_since=synced,
            move_error="NO [NOPERM] Processed is read-only", updated_at=synced))
        session.add(ImapMessageStrike(
            mailbox="support:INBOX", uidvalidity=7, uid=8, strikes=2,
            reason="the server closed the connection while sending this message",
            failed_at=synced, updated_at=synced))
    report = status_report(config)
    [box] = report.sections["imap"]
    assert box["mailbox"] == "support"
    assert box["last_sync_at"] == synced.isoformat()
    assert box["unmoved"]["count"] == 3
    assert [m["uid"] for m in box["failed_messages"]] == [8]
    assert report.exit_code == 1, "a move episode under way is degraded"
    assert main(["status", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "imap support: last sync" in out and "3 stored but not moved" in out
    assert "skipped INBOX uid 8" in out
    assert "imap: support: move failing since" in out


def test_quarantine_counts_by_reason_in_the_last_day(desk_config) -> None:
    _, config, _ = desk_config
    with App.open(config) as app:
        app.start_workers()
        raw = make_email(sender="mallory@nowhere.example").as_bytes()
        result = app.accept(raw, Envelope("mallory@nowhere.example",
                                          ["support@desk.example"]), "smtp")
        def quarantined() -> bool:
            with app.sessions() as session:
                return session.get_one(RawMessage, result.raw_id).status == "quarantined"
        wait_for(quarantined, 30, what="the unknown sender quarantined")
    report = status_report(config)
    assert report.sections["quarantine_24h"] == {"unknown_sender": 1}


def test_a_smarthost_that_does_not_answer_is_degraded_and_named(desk_config) -> None:
    from aiosmtpd.controller import Controller

    _, config, _ = desk_config
    run_scheduler_once(config)

    def with_relay(port: int) -> Any:
        return config.model_copy(update={"smtp_out": parse_config(
            '[desk]\nsupport_addresses = ["support@desk.example"]\n'
            f'[smtp_out]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\n'
            'from_address = "support@desk.example"\n', environ={}).smtp_out})

    closed = status_report(with_relay(free_port()))
    assert closed.exit_code == 1
    assert [(v, part) for v, part, _ in closed.problems] == [("degraded", "smarthost")]

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    relay = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    relay.start()
    try:
        answering = status_report(with_relay(relay.port))
    finally:
        relay.stop()
    assert answering.exit_code == 0
    assert answering.sections["smarthost"] == {"host": "127.0.0.1", "reachable": True}
