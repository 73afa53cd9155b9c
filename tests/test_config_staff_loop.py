"""The staff-loop settings: notify_attachment_bytes, staff[].timezone and the per-plan
pending settings (0 = off), with errors that name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from postdesk.workflow.rules.config import ConfigError, parse_config
from postdesk.workflow.rules.durations import Duration

EXAMPLE = (Path(__file__).resolve().parents[1] / "postdesk" / "example.toml").read_text()


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, environ={})
    return err.value.problems


def test_the_defaults_are_ten_megabytes_and_three_and_ten_business_days() -> None:
    config = parse_config(EXAMPLE, environ={})
    assert config.desk.notify_attachment_bytes == 10 * 1024 * 1024
    plan = config.plans["base"]
    assert (plan.pending_remind_after, plan.pending_close_after) == (Duration(days=3),
                                                                     Duration(days=10))
    assert all(s.timezone is None for s in config.staff)


def test_zero_turns_the_pending_settings_off() -> None:
    text = EXAMPLE.replace('[plans.base]\n', '[plans.base]\npending_remind_after = 0\n'
                                             'pending_close_after = "0"\n', 1)
    plan = parse_config(text, environ={}).plans["base"]
    assert not plan.pending_remind_after and not plan.pending_close_after


def test_a_bad_staff_zone_names_its_key() -> None:
    text = EXAMPLE.replace('role = "agent"', 'role = "agent"\ntimezone = "Mars/Olympus"', 1)
    assert "staff[0].timezone: unknown time zone 'Mars/Olympus'" in problems(text)


def test_a_bad_pending_duration_names_its_key() -> None:
    text = EXAMPLE.replace('[plans.base]\n', '[plans.base]\npending_remind_after = "soon"\n', 1)
    assert any(p.startswith("plans.base.pending_remind_after:") for p in problems(text))
