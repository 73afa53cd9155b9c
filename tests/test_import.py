"""``postdesk import mbox|maildir|eml``: the same door and pipeline as live mail, an exact
summary (every input counted once), a progress bar on stderr, and re-runs that create
nothing."""

from __future__ import annotations

import email
import json
import mailbox
from email import policy
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from postdesk.cli import main
from postdesk.ingest.accept import Envelope
from tests.conftest import start_desk, stop_desk
from tests.mailgen import history, write_mbox
from tests.support import backend, config_text, make_email


def run_import(capsys: pytest.CaptureFixture[str], config: Path, kind: str, *paths: Path,
               notify: bool = False) -> tuple[int, dict[str, Any], str]:
    args = ["import", kind, *map(str, paths), "--json", "--config", str(config)]
    code = main(args + (["--notify"] if notify else []))
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def write_config(make_desk: Any, tmp_path: Path) -> Path:
    path = tmp_path / "postdesk.toml"
    path.write_text(config_text(make_desk.backend, tmp_path / "data"))
    return path


@pytest.mark.slow
def test_mbox_of_5000_messages_with_progress_and_exact_summary(tmp_path, capsys):
    h = history(5000, tag="mbox")
    raws = h.raws()
    # Five messages twice, byte for byte; three re-sent with the same Message-ID but new
    # bytes (a client re-sending from another device): all eight are duplicates.
    resent = [raw.replace(b"\nTo: ", b"\nX-Resent: yes\nTo: ", 1) for raw in raws[10:13]]
    mbox = write_mbox(tmp_path / "history.mbox",
                      [*h.messages, *(h.messages[i] for i in range(20, 25)),
                       *(email.message_from_bytes(r, policy=policy.default) for r in resent)])
    with backend("sqlite", tmp_path) as be:
        config = tmp_path / "postdesk.toml"
        config.write_text(config_text(be, tmp_path / "data"))

        code, summary, err = run_import(capsys, config, "mbox", mbox)
        assert code == 0, err
        assert summary == {"total": 5008, "tickets_created": h.tickets,
                           "replies_threaded": h.replies, "duplicates": 8,
                           "quarantined": {"unknown_sender": h.unknown}, "failed": 0}
        assert (h.tickets, h.replies, h.unknown) == (3000, 1500, 500)
        # The progress bar (stderr) with its running counts, then the summary line.
        assert "5008/5008" in err and f"tickets {h.tickets}" in err
        assert f"5008 inputs: {h.tickets} tickets created" in err

        again_code, again, _ = run_import(capsys, config, "mbox", mbox)
        assert again_code == 0
        assert again == {"total": 5008, "tickets_created": 0, "replies_threaded": 0,
                         "duplicates": 5008, "quarantined": {}, "failed": 0}

        desk = start_desk(_config(config), smtp=False, workers=False)
        try:
            tickets = desk.tickets()
            assert len(tickets) == h.tickets
            assert desk.outbox() == []             # an import tells nobody
            # Imported history keeps its own time line: the first email's Date.
            first = h.messages[0]
            assert tickets[0]["subject"] == first["Subject"]
            opened = parsedate_to_datetime(first["Date"]).isoformat().replace("+00:00", "Z")
            assert tickets[0]["created_at"] == opened
        finally:
            stop_desk(desk)


def _config(path: Path) -> Any:
    from postdesk.workflow.rules.config import parse_config

    return parse_config(path.read_text(), environ={})


def test_every_input_counted_once_and_unreadable_ones_named(make_desk, tmp_path, capsys):
    desk = make_desk(smtp=False, workers=False)
    config = write_config(make_desk, tmp_path)
    emls = tmp_path / "emls"
    emls.mkdir()
    first = make_email(subject="Imported question")
    (emls / "1.eml").write_bytes(first.as_bytes())
    (emls / "2.eml").write_bytes(make_email(
        subject=f"Re: {first['Subject']}", in_reply_to=first["Message-ID"],
        references=first["Message-ID"], body="And another thing.").as_bytes())
    (emls / "3.eml").write_bytes(make_email(sender="nobody@stranger.example").as_bytes())
    (emls / "4.eml").write_bytes(b"\x00\xff\xfe not an email \x00")
    missing = tmp_path / "missing.eml"

    code, summary, err = run_import(capsys, config, "eml", emls, missing)
    assert code == 1                                   # something could not be read
    assert f"cannot read {missing}" in err
    assert summary["total"] == 5
    assert (summary["tickets_created"], summary["replies_threaded"]) == (1, 1)
    assert summary["failed"] == 1 and summary["duplicates"] == 0
    assert summary["quarantined"].get("unknown_sender") == 1
    assert sum(summary["quarantined"].values()) == 2   # the stranger and the garbage
    assert [t["subject"] for t in desk.tickets()] == ["Imported question"]

    # An mbox PATH that is a directory is one failed input, not a crash.
    code, summary, err = run_import(capsys, config, "mbox", emls)
    assert code == 1 and summary["total"] == 1 and summary["failed"] == 1
    assert "not an mbox file" in err


def test_maildir_import_and_rerun(make_desk, tmp_path, capsys):
    desk = make_desk(smtp=False, workers=False)
    config = write_config(make_desk, tmp_path)
    h = history(40, tag="maildir")
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for msg in h.messages:
        box.add(msg)
    code, summary, _ = run_import(capsys, config, "maildir", tmp_path / "Maildir")
    assert code == 0
    assert summary == {"total": 40, "tickets_created": h.tickets, "replies_threaded": h.replies,
                       "duplicates": 0, "quarantined": {"unknown_sender": h.unknown},
                       "failed": 0}
    _, again, _ = run_import(capsys, config, "maildir", tmp_path / "Maildir")
    assert again["duplicates"] == 40 and again["tickets_created"] == 0
    assert len(desk.tickets()) == h.tickets


def test_interrupted_import_processes_what_was_left_pending(make_desk, tmp_path, capsys):
    desk = make_desk(smtp=False, workers=False)
    config = write_config(make_desk, tmp_path)
    msg = make_email(subject="Half imported")
    path = tmp_path / "one.eml"
    path.write_bytes(msg.as_bytes())
    # A previous run stored the message and died before processing it.
    desk.app.accept(path.read_bytes(), Envelope(), "import:eml", notify=False, enqueue=False)
    _, summary, _ = run_import(capsys, config, "eml", path)
    assert summary["tickets_created"] == 1 and summary["duplicates"] == 0
    assert [t["subject"] for t in desk.tickets()] == ["Half imported"]


def test_notify_flag_acknowledges_like_live_mail(make_desk, tmp_path, capsys):
    desk = make_desk(smtp=False, workers=False)
    config = write_config(make_desk, tmp_path)
    quiet, loud = tmp_path / "quiet.eml", tmp_path / "loud.eml"
    quiet.write_bytes(make_email(subject="Imported quietly").as_bytes())
    loud.write_bytes(make_email(sender="bob@client.example", subject="Imported loudly")
                     .as_bytes())
    assert run_import(capsys, config, "eml", quiet)[1]["tickets_created"] == 1
    assert run_import(capsys, config, "eml", loud, notify=True)[1]["tickets_created"] == 1
    acks = [o for o in desk.outbox() if o["template"] == "acknowledgement"]
    assert [(a["ticket"], a["to"]) for a in acks] == [("PD-2", ["bob@client.example"])]


def test_workers_flag_sets_the_helper_processes_and_refuses_a_negative_count(
        make_desk, tmp_path, capsys):
    make_desk(smtp=False, workers=False)
    config = write_config(make_desk, tmp_path)
    h = history(120, tag="workers")
    mbox = write_mbox(tmp_path / "workers.mbox", h.messages)
    code = main(["import", "mbox", str(mbox), "--json", "--workers", "2",
                 "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {"total": 120, "tickets_created": h.tickets,
                               "replies_threaded": h.replies, "duplicates": 0,
                               "quarantined": {"unknown_sender": h.unknown}, "failed": 0}
    with pytest.raises(SystemExit) as exit_:
        main(["import", "mbox", str(mbox), "--workers", "-1", "--config", str(config)])
    assert exit_.value.code == 2
    assert "--workers: must be 0 or more: -1" in capsys.readouterr().err
