"""The operator's CLI: `tickets list` as a table that fits the terminal, its filters,
`outbox show` decoded, `--version`, `--config` on either side of the subcommand, choices
checked with a clear error, quiet broken pipes, exit codes as the README says."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from postdesk.app import App
from postdesk.cli import main
from postdesk.storage.directory import org_by_slug, staff_by_email
from postdesk.storage.models import Message, SlaClock, Ticket
from postdesk.workflow.rules.config import load_config
from tests.support import BASECO, Backend, config_text

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC)


@pytest.fixture
def desk_file(tmp_path: Path) -> Path:
    be = Backend("sqlite", f"sqlite:///{tmp_path / 'postdesk.db'}", "stub://", "pdcli")
    path = tmp_path / "postdesk.toml"
    path.write_text(config_text(be, tmp_path / "data", extra=BASECO))
    with App.open(load_config(path)) as app:
        app.upgrade_database()
        app.sync_directory()
    return path


def fill(path: Path, count: int) -> None:
    """``count`` tickets: every 5th assigned to dev2 and overdue, every 7th mentions
    "invoice" in a message body only, long subjects throughout."""
    with App.open(load_config(path)) as app, app.sessions() as session, session.begin():
        clientco, baseco = org_by_slug(session, "clientco"), org_by_slug(session, "baseco")
        dev1 = staff_by_email(session, "dev1@agency.example")
        dev2 = staff_by_email(session, "dev2@agency.example")
        assert clientco and baseco and dev1 and dev2
        for n in range(1, count + 1):
            overdue = n % 5 == 0
            ticket = Ticket(org_id=(clientco if n % 2 else baseco).id,
                            requester_email="alice@client.example",
                            subject=f"Ticket number {n} with a long subject line that "
                                    "goes on and on past any terminal's edge " * 2,
                            status="open", priority=("P1", "P2", "P3")[n % 3],
                            assignee_id=(dev2 if overdue else dev1).id,
                            created_at=NOW - timedelta(hours=3), updated_at=NOW, cc=[])
            session.add(ticket)
            session.flush()
            session.add(SlaClock(ticket_id=ticket.id, target="first_response", cycle=0,
                                 calendar="always", started_at=NOW - timedelta(hours=3),
                                 due_at=NOW + timedelta(hours=-1 if overdue else 2)))
            if n % 7 == 0:
                session.add(Message(ticket_id=ticket.id, direction="in", kind="public",
                                    dedupe_key=f"m{n}", references=[], to=[], cc=[],
                                    text="Please resend the INVOICE for October.",
                                    created_at=NOW))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tickets_list_of_500_at_80_columns_is_a_header_and_one_short_line_each(
        desk_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    fill(desk_file, 500)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, "tickets", "list", "--config", str(desk_file))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["REF", "PRI", "STATUS", "ORG", "ASSIGNEE", "NEXT", "DUE",
                                "SUBJECT"]
    assert len(lines) == 1 + 500
    assert max(len(line) for line in lines) <= 80
    assert [line.split()[0] for line in lines[1:]] == [f"PD-{n}" for n in range(1, 501)]
    assert "Client Co" in lines[1] and "Base Co" in lines[2]
    assert "ago (" in lines[5] and "in 1h" in lines[1]   # PD-5 overdue, PD-1 due in ~2h


def test_tickets_list_filters_by_search_assignee_me_overdue_and_limit(
        desk_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    fill(desk_file, 40)
    monkeypatch.setenv("COLUMNS", "200")

    def refs(*extra: str) -> list[str]:
        code, out, err = run(capsys, "tickets", "list", "--config", str(desk_file), *extra)
        assert code == 0, err
        return [line.split()[0] for line in out.splitlines()[1:]]

    assert refs("--search", "invoice") == [f"PD-{n}" for n in (7, 14, 21, 28, 35)]
    assert refs("--search", "number 12 with") == ["PD-12"]
    monkeypatch.setenv("POSTDESK_STAFF", "dev2@agency.example")
    fifths = [f"PD-{n}" for n in range(5, 41, 5)]
    assert refs("--assignee", "me") == fifths
    assert refs("--overdue") == fifths
    assert refs("--assignee", "dev1@agency.example", "--overdue") == []
    assert refs("--limit", "3") == ["PD-1", "PD-2", "PD-3"]
    assert refs("--priority", "P1", "--org", "baseco", "--limit", "2") == ["PD-6", "PD-12"]
    monkeypatch.delenv("POSTDESK_STAFF")
    code, _, err = run(capsys, "tickets", "list", "--config", str(desk_file),
                       "--assignee", "me")
    assert code == 2 and "POSTDESK_STAFF" in err


def test_choices_are_checked_with_a_clear_error_and_exit_2(
        desk_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["tickets", "list", "--config", str(desk_file), "--status", "bogus"])
    assert stop.value.code == 2
    assert "argument --status: invalid choice: 'bogus'" in capsys.readouterr().err
    code, _, err = run(capsys, "tickets", "list", "--config", str(desk_file), "--org", "nope")
    assert code == 2 and "--org: unknown org 'nope' (orgs: clientco, baseco)" in err


def test_a_group_alone_names_its_subcommands_not_an_internal_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["tickets"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "postdesk tickets: error: the following arguments are required: {list,show}" in err
    assert "t_cmd" not in err


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"postdesk {version('postdesk')}\n"


def test_config_works_before_and_after_the_subcommand(
        desk_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(desk_file.parent.parent)   # no ./postdesk.toml here
    monkeypatch.delenv("POSTDESK_CONFIG", raising=False)
    before = run(capsys, "--config", str(desk_file), "tickets", "list")
    after = run(capsys, "tickets", "list", "--config", str(desk_file))
    assert before == after == (0, "no tickets\n", "")


def test_an_unreachable_database_exits_2_with_one_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    be = Backend("sqlite", "postgresql+psycopg://nobody@127.0.0.1:1/none", "stub://", "x")
    path = tmp_path / "postdesk.toml"
    path.write_text(config_text(be, tmp_path / "data"))
    code, out, err = run(capsys, "tickets", "list", "--config", str(path))
    assert code == 2 and out == ""
    assert err.startswith("postdesk: cannot use the database:") and "Traceback" not in err


def test_config_check_reports_every_problem_in_one_pass(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    be = Backend("sqlite", f"sqlite:///{tmp_path / 'x.db'}", "stub://", "x")
    text = config_text(be, tmp_path / "data", extra=BASECO)
    text = (text.replace('worker_threads = 4', 'worker_threads = 0')            # range
            .replace('name = "Base Co"', 'name = "Base Co"\ncolour = "blue"')  # unknown key
            .replace('plan = "base"', 'plan = "gold"')                        # unknown plan
            .replace('start = "2026-11-23"', 'start = "2026-11-24"')          # not Monday
            .replace('[digest]', '[digest]\ntimezone = "Mars/Base"'))         # zone
    path = tmp_path / "postdesk.toml"
    path.write_text(text)
    code, _, err = run(capsys, "config", "check", "--config", str(path))
    assert code == 2
    for problem in ["desk.worker_threads: Input should be greater than or equal to 1",
                    "orgs[1].colour: unknown key", "orgs[1].plan: unknown plan 'gold'",
                    "rota.start: 2026-11-24 is not a Monday",
                    "digest.timezone: unknown time zone 'Mars/Base'"]:
        assert problem in err, (problem, err)


def test_outbox_show_prints_headers_and_the_decoded_text(
        desk_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from postdesk.workflow.desk.digest import build_digest
    from postdesk.workflow.desk.outbox import OutboxWriter, render_drafts

    with App.open(load_config(desk_file)) as app:
        with app.sessions() as session, session.begin():
            writer = OutboxWriter(session, app.services, app.now())
            writer.queue(dedupe_key="t", template="digest", to=["boss@agency.example"],
                         subject="Caf\u00e9 digest \u2014 \u00fcber",
                         context={"d": build_digest(app.services, app.now())})
            [outbox_id] = writer.queued_ids
        render_drafts(app.services, [outbox_id])
    code, out, _ = run(capsys, "outbox", "show", str(outbox_id), "--config", str(desk_file),
                       "--html", str(tmp_path / "part.html"))
    assert code == 0
    assert "Subject: Caf\u00e9 digest \u2014 \u00fcber\n" in out
    assert "To: boss@agency.example\n" in out
    assert "Acme Digital Support - support digest for" in out
    assert "=?utf-8?" not in out and "Content-Transfer-Encoding" not in out
    assert "<table" in (tmp_path / "part.html").read_text()
    code, out, _ = run(capsys, "outbox", "show", str(outbox_id), "--config", str(desk_file),
                       "--raw")
    assert code == 0 and "Content-Type: multipart/alternative" in out


@pytest.mark.slow
def test_tickets_show_into_head_ends_quietly(desk_file: Path) -> None:
    fill(desk_file, 1)
    env = {**os.environ, "COLUMNS": "80"}
    # Enough output that head leaves before postdesk has written it all.
    with App.open(load_config(desk_file)) as app, app.sessions() as session, session.begin():
        session.add_all(Message(ticket_id=1, direction="in", kind="public",
                                dedupe_key=f"big{n}", references=[], to=[], cc=[],
                                text="line\n" * 2000, created_at=NOW) for n in range(20))
    cmd = (f"{sys.executable} -m postdesk.cli tickets show PD-1 --config {desk_file} "
           "| head -1")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.stdout.startswith("PD-1  Ticket number 1")
    assert result.stderr == "" and result.returncode == 0


def test_digest_dry_run_prints_the_text_and_writes_the_html_to_a_named_file(
        desk_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(desk_file, 3)
    code, out, _ = run(capsys, "digest", "--manager", "boss@agency.example", "--dry-run",
                       "--config", str(desk_file))
    assert code == 0
    assert "support digest for" in out and "SLA COMPLIANCE THIS MONTH" in out
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith("HTML part written to ")
    html = Path(last.removeprefix("HTML part written to ")).read_text()
    assert "<table" in html and "Client Co" in html and "<script" not in html


def test_report_time_prints_the_statement_figures_and_csv(
        desk_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from postdesk.storage.models import TimeEntry

    with App.open(load_config(desk_file)) as app, app.sessions() as session, session.begin():
        baseco = org_by_slug(session, "baseco")
        assert baseco is not None
        for n, minutes in ((1, 90), (2, 45)):
            session.add(Ticket(org_id=baseco.id, requester_email="bob@base.example",
                               subject=f"Job {n}", status="open", priority="P3",
                               created_at=datetime(2026, 11, 2, 10, tzinfo=UTC),
                               updated_at=datetime(2026, 11, 2, 10, tzinfo=UTC), cc=[]))
            session.flush()
            session.add(TimeEntry(ticket_id=n, org_id=baseco.id, seconds=minutes * 60,
                                  year=2026, month=11,
                                  logged_at=datetime(2026, 11, 3, 10, tzinfo=UTC)))
    code, out, _ = run(capsys, "report", "time", "--month", "2026-11", "--org", "baseco",
                       "--config", str(desk_file))
    assert code == 0
    assert out.splitlines()[:2] == [
        "Base Co (baseco), November 2026: 2 tickets, time logged 2h 15m",
        "  allowance 2h 00m + rolled over 0h 00m = 2h 00m; used 2h 15m; remaining -0h 15m; "
        "carried into next month -0h 15m"]
    code, out, _ = run(capsys, "report", "time", "--month", "2026-11", "--csv",
                       "--config", str(desk_file))
    rows = list(csv.DictReader(out.splitlines()))
    assert [(r["org"], r["ticket"], r["minutes"], r["hours"]) for r in rows] == [
        ("baseco", "PD-1", "90", "1.50"), ("baseco", "PD-2", "45", "0.75")]
    code, _, err = run(capsys, "report", "time", "--month", "2026-13", "--config",
                       str(desk_file))
    assert code == 2 and "--month: not a month like 2026-11: '2026-13'" in err


def test_ctrl_c_ends_quietly_with_130(desk_file: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import postdesk.cli as cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt   # what Ctrl-C raises in the middle of a command

    monkeypatch.setattr(cli, "cmd_tickets_list", interrupted)
    code, out, err = run(capsys, "tickets", "list", "--config", str(desk_file))
    assert (code, out, err) == (130, "", "\n")
