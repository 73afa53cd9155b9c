"""`postdesk sla due` against hand-computed due instants, 2026-2028 (UK office calendar:
Mon-Fri 08:00-18:00 Europe/London, England bank holidays, closed 24 Dec 2026)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from postdesk.cli import main

ROOT = Path(__file__).resolve().parents[1]
RAPID_PLAN = """
[plans.rapid]
calendar = "uk-office"
first_response = { P1 = "1h" }
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    text = (ROOT / "postdesk" / "example.toml").read_text() + RAPID_PLAN
    path = tmp_path / "postdesk.toml"
    path.write_text(text)
    return path


CASES = [
    # plan, priority, target, from, expected due, why
    ("base", "P1", "first_response", "2026-11-20T17:00:00Z", "2026-11-23T12:00:00Z",
     "Fri 17:00 + 5h: 1h Fri, 4h Mon"),
    ("base", "P3", "first_response", "2026-11-24T19:30:00Z", "2026-11-25T18:00:00Z",
     "after hours: counting starts Wed 08:00, 10h = the whole day"),
    ("rapid", "P1", "first_response", "2026-11-23T16:55:00Z", "2026-11-23T17:55:00Z",
     "16:55 + 1h the same afternoon"),
    ("rapid", "P1", "first_response", "2026-11-23T17:30:00Z", "2026-11-24T08:30:00Z",
     "17:30 + 1h: 30m today, 30m tomorrow"),
    ("base", "P1", "first_response", "2026-12-23T17:00:00Z", "2026-12-29T12:00:00Z",
     "24 Dec closed, 25 Dec Christmas, weekend, Mon 28 Dec Boxing Day substitute"),
    ("base", "P1", "first_response", "2026-03-27T17:00:00Z", "2026-03-30T11:00:00Z",
     "DST starts Sun 29 Mar 2026: Mon 08:00 BST is 07:00 UTC"),
    ("base", "P1", "first_response", "2026-10-23T16:00:00Z", "2026-10-26T12:00:00Z",
     "DST ends Sun 25 Oct 2026: Fri 17:00 BST, Mon 08:00 GMT"),
    ("base", "P1", "first_response", "2027-03-25T17:00:00Z", "2027-03-30T11:00:00Z",
     "Good Friday 26 Mar, DST Sun 28 Mar, Easter Monday 29 Mar 2027"),
    ("base", "P2", "first_response", "2027-12-24T17:00:00Z", "2027-12-29T15:00:00Z",
     "Christmas 2027 on a Saturday: substitutes Mon 27 and Tue 28 Dec"),
    ("base", "P1", "first_response", "2027-12-31T17:00:00Z", "2028-01-04T12:00:00Z",
     "New Year 2028 on a Saturday: substitute Mon 3 Jan"),
    ("base", "P1", "first_response", "2028-03-24T17:00:00Z", "2028-03-27T11:00:00Z",
     "DST starts Sun 26 Mar 2028"),
    ("base", "P1", "resolution", "2026-11-23T10:00:00Z", "2026-11-25T10:00:00Z",
     "2 business days: same position two open days later"),
    ("base", "P1", "resolution", "2026-11-19T10:00:00Z", "2026-11-23T10:00:00Z",
     "2 business days from Thursday land on Monday"),
    ("base", "P1", "next_update", "2026-11-23T15:00:00Z", "2026-11-24T09:00:00Z",
     "next update 4h from Mon 15:00"),
    ("enterprise", "P1", "first_response", "2026-11-21T23:30:00Z", "2026-11-22T00:30:00Z",
     "Enterprise P1 runs 24/7: Saturday night counts"),
    ("enterprise", "P1", "first_response", "2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z",
     "24/7 across the DST night: real elapsed hour"),
    ("enterprise", "P2", "first_response", "2026-11-21T23:30:00Z", "2026-11-23T10:00:00Z",
     "Enterprise P2 is on office hours"),
]


@pytest.mark.parametrize(("plan", "prio", "target", "start", "expected", "why"), CASES,
                         ids=[c[5] for c in CASES])
def test_sla_due_matches_hand_computation(config_file, capsys, plan, prio, target, start,
                                          expected, why):
    code = main(["sla", "due", "--config", str(config_file), "--plan", plan, "--priority", prio,
                 "--from", start, "--target", target, "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["due"] == expected, why


def test_absent_target_is_best_effort(config_file, capsys):
    assert main(["sla", "due", "--config", str(config_file), "--plan", "base",
                 "--priority", "P3", "--from", "2026-11-23T09:00:00Z", "--target",
                 "resolution", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["due"] is None


def test_bad_input_is_a_clear_error_not_a_traceback(config_file, capsys):
    assert main(["sla", "due", "--config", str(config_file), "--plan", "gold", "--priority",
                 "P1", "--from", "2026-11-23T09:00:00Z"]) == 2
    assert "--plan: unknown plan 'gold'" in capsys.readouterr().err
    assert main(["sla", "due", "--config", str(config_file), "--plan", "base", "--priority",
                 "P1", "--from", "2026-11-23 09:00"]) == 2
    assert "--from: give a time zone" in capsys.readouterr().err


def test_real_command_prints_plain_instant(config_file):
    out = subprocess.run(
        [sys.executable, "-m", "postdesk.cli", "sla", "due", "--config", str(config_file),
         "--plan", "base", "--priority", "P1", "--from", "2026-12-23T17:00:00Z"],
        capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "2026-12-29T12:00:00Z"
