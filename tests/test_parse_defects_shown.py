"""What the lenient parser repaired in an email is kept on its message and shown by
`tickets show` (issue 17: "each defect recorded, nothing silently invented"): the JSON
form lists it as ``parse_defects``, the text form prints it under the message. The email
comes in through the SMTP door, the answer is read through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from postdesk.cli import main
from tests.support import config_text, make_email

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")

TWO_FROMS = Path(__file__).parent / "fidelity" / "fixtures" / "1a-two-from-first-garbage.eml"
SENDER_CHOSEN = "2 From: header fields; the sender is taken from number 2"


def config_file(make_desk: Any, desk: Any, tmp_path: Path) -> str:
    """The running desk's config as a file, for the CLI."""
    path = tmp_path / "postdesk.toml"
    path.write_text(config_text(make_desk.backend, Path(desk.config.desk.data_dir)))
    return str(path)


def tickets_show(capsys: pytest.CaptureFixture[str], config: str, *flags: str) -> str:
    capsys.readouterr()
    assert main(["tickets", "show", "PD-1", "--config", config, *flags]) == 0
    return capsys.readouterr().out


def test_an_email_with_two_from_fields_shows_the_defect_on_its_message(
        make_desk: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desk = make_desk()
    wire = TWO_FROMS.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    desk.send(wire, mail_from="alice@client.example")
    desk.wait_settled()
    config = config_file(make_desk, desk, tmp_path)

    shown = json.loads(tickets_show(capsys, config, "--json"))
    [first] = [m for m in shown["messages"] if m["direction"] == "in"]
    assert (first["from"], first["from_name"]) == ("alice@client.example", "Alice Example")
    assert SENDER_CHOSEN in first["parse_defects"]
    # The acknowledgement was written by the desk, not parsed: nothing to report.
    assert [m["parse_defects"] for m in shown["messages"] if m["direction"] == "out"] == [[]]

    text = tickets_show(capsys, config).splitlines()
    header = next(i for i, line in enumerate(text) if line.startswith("--- in public"))
    assert text[header + 1].startswith("  parse defects: ")
    assert SENDER_CHOSEN in text[header + 1]


def test_a_clean_email_shows_no_parse_defects(
        make_desk: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desk = make_desk()
    desk.send(make_email(sender="Alice Example <alice@client.example>", subject="Clean"))
    desk.wait_settled()
    config = config_file(make_desk, desk, tmp_path)

    shown = json.loads(tickets_show(capsys, config, "--json"))
    assert [m["parse_defects"] for m in shown["messages"]] == [[], []]
    assert "parse defects" not in tickets_show(capsys, config)
