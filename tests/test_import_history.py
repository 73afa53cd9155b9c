"""Importing history safely: old mail is counted against its own Date (no ``flood``), its
SLA crossings are recorded silently (no alert then, none from the next scheduler run),
``--as-closed`` / ``--as-status`` file it, and Ctrl-C says how far it got and a re-run
resumes. Through the CLI, on SQLite, with the wall clock: the history ends months ago."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from postdesk import importer
from postdesk.cli import main
from postdesk.scheduler import Scheduler
from postdesk.storage.models import Event, SlaClock, Ticket
from postdesk.workflow.pipeline.builtin import Pipeline
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Step
from postdesk.workflow.rules.config import parse_config
from tests.conftest import Desk, start_desk, stop_desk
from tests.mailgen import write_mbox
from tests.support import BASECO, backend, config_text

# Months before "now" (the wall clock): every crossing in this history is in the past.
HISTORY_START = datetime(2026, 5, 4, 7, 0, tzinfo=UTC)
FOUR_MONTHS = timedelta(days=120)
SENDERS = [f"{name}@client.example" for name in ("alice", "amir", "ana", "arlo", "ava")] + \
          [f"{name}@base.example" for name in ("bob", "bea", "ben", "bo", "bram")]
ALERTS = ("sla_at_risk", "sla_breached", "followup_reminder", "followup_missed", "p1_page")


def four_months_of_mail(count: int) -> list[EmailMessage]:
    """``count`` emails from ten senders of two orgs spread evenly over four months: two
    in three open a ticket (every 25th says "site down": a P1), one in three replies to
    its sender's latest ticket. Each sender opens about one ticket an hour at busy times:
    well under the flood limit by the emails' own Dates, all within one hour of import."""
    step = FOUR_MONTHS / count
    latest: dict[str, EmailMessage] = {}
    out = []
    for i in range(count):
        sender = SENDERS[i % len(SENDERS)]
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = "support@desk.example"
        msg["Date"] = format_datetime(HISTORY_START + step * i)
        msg["Message-ID"] = f"<hist-{i}@{sender.split('@')[1]}>"
        parent = latest.get(sender)
        if i % 3 == 2 and parent is not None:
            msg["Subject"] = f"Re: {parent['Subject']}"
            msg["In-Reply-To"] = msg["References"] = parent["Message-ID"]
            msg.set_content("Any news on this?")
        else:
            msg["Subject"] = ("Site down again" if i % 25 == 0 else f"Question number {i}")
            msg.set_content("Hello, please help.")
            latest[sender] = msg
        out.append(msg)
    return out


def new_tickets(messages: list[EmailMessage]) -> int:
    return sum(1 for m in messages if m["In-Reply-To"] is None)


@pytest.fixture
def desk_files(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with backend("sqlite", tmp_path) as be:
        text = config_text(be, tmp_path / "data", extra=BASECO)
        path = tmp_path / "postdesk.toml"
        path.write_text(text)
        yield path, text


def run_import(capsys: pytest.CaptureFixture[str], config: Path, mbox: Path, *flags: str
               ) -> tuple[int, dict[str, Any], str]:
    code = main(["import", "mbox", str(mbox), "--json", "--config", str(config), *flags])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def open_desk(text: str) -> Desk:
    return start_desk(parse_config(text, environ={}), smtp=False, workers=False)


def alerts(desk: Desk) -> list[str]:
    return [r["template"] for r in desk.outbox() if r["template"] in ALERTS]


def next_scheduler_run(desk: Desk) -> dict[str, object]:
    results = Scheduler(desk.app.services, desk.app.dispatch).run_once()
    assert not any(isinstance(r, Exception) for r in results.values()), results
    return results


def test_imported_history_records_its_breaches_silently_and_the_next_run_alerts_nobody(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        desk_files: tuple[Path, str]) -> None:
    config, text = desk_files
    messages = four_months_of_mail(90)
    code, summary, err = run_import(capsys, config,
                                    write_mbox(tmp_path / "history.mbox", messages))
    assert code == 0, err
    assert summary["quarantined"] == {} and summary["tickets_created"] == new_tickets(messages)
    desk = open_desk(text)
    try:
        assert desk.outbox() == []                         # the import told nobody
        with desk.app.sessions() as s:
            breached = s.scalar(select(func.count()).select_from(SlaClock)
                                .where(SlaClock.breached_at.is_not(None)))
            silent = s.scalars(select(Event.data).where(Event.kind == "sla_breached")).all()
            # Recorded at the instant each clock crossed, months ago.
            latest = s.scalar(select(func.max(SlaClock.breached_at)))
        assert breached and len(silent) == breached and all(d["silent"] for d in silent)
        assert latest is not None and latest < HISTORY_START + FOUR_MONTHS + timedelta(days=7)

        results = next_scheduler_run(desk)
        scan = results["sla_scan"]
        assert (scan.at_risk, scan.breached) == (0, 0)      # type: ignore[attr-defined]
        assert alerts(desk) == []
    finally:
        stop_desk(desk)


def test_a_crossing_after_the_import_is_still_alerted(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        desk_files: tuple[Path, str]) -> None:
    """Settling is only for the past: a ticket imported with a Date of an hour ago is
    due later and alerted when it gets there (the scan is not switched off)."""
    config, text = desk_files
    msg = four_months_of_mail(2)[1]                    # a P3 question
    msg.replace_header("Date", format_datetime(datetime.now(UTC) - timedelta(hours=1)))
    code, _summary, err = run_import(capsys, config, write_mbox(tmp_path / "one.mbox", [msg]))
    assert code == 0, err
    desk = open_desk(text)
    try:
        with desk.app.sessions() as s:
            due = max(s.scalars(select(SlaClock.due_at)))
        results = Scheduler(desk.app.services, desk.app.dispatch)
        desk.app.services.clock = _FixedClock(due + timedelta(minutes=1))
        assert results.run_once()["sla_scan"].breached >= 1   # type: ignore[attr-defined]
        assert "sla_breached" in alerts(desk)
    finally:
        stop_desk(desk)


class _FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def test_as_status_files_every_imported_ticket_and_stops_its_clocks_where_its_history_ends(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        desk_files: tuple[Path, str]) -> None:
    config, text = desk_files
    messages = four_months_of_mail(30)
    code, summary, err = run_import(capsys, config, write_mbox(tmp_path / "h.mbox", messages),
                                    "--as-status", "resolved")
    assert code == 0, err
    desk = open_desk(text)
    try:
        with desk.app.sessions() as s:
            statuses = set(s.scalars(select(Ticket.status)))
            running = s.scalar(select(func.count()).select_from(SlaClock)
                               .where(SlaClock.stopped_at.is_(None)))
            last_stop = s.scalar(select(func.max(SlaClock.stopped_at)))
        assert statuses == {"resolved"} and running == 0
        assert last_stop is not None and last_stop <= HISTORY_START + FOUR_MONTHS
    finally:
        stop_desk(desk)


def test_ctrl_c_says_how_far_it_got_and_a_rerun_resumes(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, desk_files: tuple[Path, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config, _text = desk_files
    mbox = write_mbox(tmp_path / "h.mbox", four_months_of_mail(30))
    real = importer.process_batch
    calls = {"n": 0}

    def interrupt_at_the_twelfth(ctx: Inbound) -> None:
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt

    def interrupted(services: Any, raw_ids: Any, pipeline: Pipeline, **kw: Any) -> Any:
        checks = [Step("ctrl-c", interrupt_at_the_twelfth), *pipeline.checks]
        return real(services, raw_ids, dataclasses.replace(pipeline, checks=checks), **kw)

    monkeypatch.setattr(importer, "process_batch", interrupted)
    code, _summary, err = run_import(capsys, config, mbox, "--batch", "10")
    assert code == 130
    # Ctrl-C in the second batch of ten: its transaction is rolled back whole.
    assert "interrupted: 10 of 30 done" in err

    monkeypatch.setattr(importer, "process_batch", real)
    code, summary, err = run_import(capsys, config, mbox, "--batch", "10")
    assert code == 0, err
    assert summary["total"] == 30 and summary["failed"] == 0
    # The ten done are duplicates now; the rest (the whole second batch) are done now.
    assert summary["duplicates"] == 10
    assert summary["tickets_created"] + summary["replies_threaded"] == 20


@pytest.mark.slow
def test_importing_3000_emails_over_four_months_as_closed_floods_nothing_and_alerts_nobody(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        desk_files: tuple[Path, str]) -> None:
    config, text = desk_files
    messages = four_months_of_mail(3000)
    tickets = new_tickets(messages)
    assert tickets > 1990
    code, summary, err = run_import(capsys, config,
                                    write_mbox(tmp_path / "history.mbox", messages), "--as-closed")
    assert code == 0, err
    assert summary["total"] == 3000 and summary["failed"] == 0
    assert "flood" not in summary["quarantined"] and summary["quarantined"] == {}
    assert summary["tickets_created"] == tickets
    assert summary["replies_threaded"] == 3000 - tickets
    desk = open_desk(text)
    try:
        assert alerts(desk) == [] and desk.outbox() == []
        next_scheduler_run(desk)
        assert alerts(desk) == []
        with desk.app.sessions() as s:
            statuses = dict(s.execute(select(Ticket.status, func.count())
                                      .group_by(Ticket.status)).all())
        assert statuses == {"closed": tickets}
    finally:
        stop_desk(desk)
