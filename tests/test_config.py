from __future__ import annotations

from pathlib import Path

import pytest

from postdesk.workflow.rules.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "postdesk" / "example.toml").read_text()


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, environ={})
    return err.value.problems


def test_unknown_plan_names_its_key_path() -> None:
    assert "orgs[0].plan: unknown plan 'gold'" in problems(
        EXAMPLE.replace('plan = "enterprise"', 'plan = "gold"'))


def test_unknown_keys_and_bad_values_are_all_reported() -> None:
    text = EXAMPLE.replace('role = "agent"', 'role = "boss"\nshoe_size = 9').replace(
        'port = 2525', 'port = "twenty"')
    found = problems(text)
    assert "staff[0].shoe_size: unknown key" in found
    assert any(p.startswith("staff[0].role:") for p in found)
    assert any(p.startswith("smtp_in.port:") for p in found)
    assert len(found) == 3


def test_bad_duration_and_priority_name_their_keys() -> None:
    found = problems(EXAMPLE.replace('P2 = "8h", P3 = "10h"', 'P2 = "8 hours", P7 = "1h"'))
    assert any(p.startswith("plans.base.first_response:") and "8 hours" in p for p in found)


def test_cross_references_are_checked() -> None:
    text = EXAMPLE.replace('calendar = "uk-office"\nfirst_response = { P1 = "5h"',
                           'calendar = "mars"\nfirst_response = { P1 = "5h"')
    text = text.replace('start = 2026-11-23', 'start = 2026-11-24')
    text = text.replace('timezone = "Europe/London"\nhours', 'timezone = "Europe/Londn"\nhours')
    found = problems(text)
    assert "plans.base.calendar: unknown calendar 'mars'" in found
    assert "rota.start: 2026-11-24 is not a Monday" in found
    assert "calendars.uk-office.timezone: unknown time zone 'Europe/Londn'" in found


def test_environment_overrides_urls_and_secrets() -> None:
    cfg = parse_config(EXAMPLE, environ={"POSTDESK_DATABASE_URL": "postgresql+psycopg://x/y",
                                         "POSTDESK_BROKER_URL": "redis://r:6379/0",
                                         "POSTDESK_SECRET": "s3cret"})
    assert cfg.desk.database_url == "postgresql+psycopg://x/y"
    assert cfg.desk.broker_url == "redis://r:6379/0"
    assert cfg.desk.secret == "s3cret"


def test_not_toml_is_one_clear_problem() -> None:
    [problem] = problems("[desk\nname=")
    assert "not valid TOML" in problem


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.toml")
    assert "config file not found" in err.value.problems[0]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "postdesk.toml").write_text(EXAMPLE)
    cfg = load_config(tmp_path / "postdesk.toml")
    assert cfg.desk.data_dir == str(tmp_path / "data")
    assert cfg.desk.database_url == f"sqlite:///{tmp_path / 'postdesk.db'}"


def test_a_digest_calendar_must_name_a_calendar() -> None:
    text = EXAMPLE.replace('# calendar = "uk-office"', 'calendar = "lunar"')
    assert text != EXAMPLE, "the example config shows the digest calendar key"
    assert "digest.calendar: unknown calendar 'lunar'" in problems(text)
    good = EXAMPLE.replace('# calendar = "uk-office"', 'calendar = "uk-office"')
    assert parse_config(good, environ={}).digest.calendar == "uk-office"
