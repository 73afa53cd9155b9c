"""Opening hours are checked when the config is read, by the calendar's own parser:
hours that run past midnight, overlap or are not HH:MM-HH:MM are refused, with the
problem named by its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from postdesk.workflow.rules.config import Config, ConfigError, parse_config
from tests.support import Backend, config_text

GOOD_HOURS = 'mon = "08:00-18:00"'


def parse_with_monday(hours: str) -> Config:
    be = Backend("sqlite", "sqlite:///unused.db", "stub://", "pdrules")
    text = config_text(be, Path("/nonexistent/data"), smtp_port=2525)
    assert text.count(GOOD_HOURS) == 1
    return parse_config(text.replace(GOOD_HOURS, f"mon = {hours!r}".replace("'", '"')),
                        environ={})


def problems(hours: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_with_monday(hours)
    return err.value.problems


def test_the_test_config_itself_is_accepted() -> None:
    assert parse_with_monday("08:00-18:00").calendars["uk-office"].hours["mon"] == "08:00-18:00"


def test_overnight_hours_are_refused_naming_the_calendars_hours() -> None:
    found = problems("18:00-08:00")
    assert len(found) == 1
    assert found[0].startswith("calendars.uk-office.hours:")
    assert "18:00-08:00" in found[0] and "closes before it opens" in found[0]


@pytest.mark.parametrize(("hours", "why"), [
    ("8-18", "is not HH:MM-HH:MM"),
    ("08:00-12:00,11:00-13:00", "overlap"),
    ("08:00-08:00", "closes before it opens"),
    ("25:00-26:00", "not a valid opening time"),
])
def test_other_impossible_hours_are_refused_naming_the_calendars_hours(
        hours: str, why: str) -> None:
    [problem] = problems(hours)
    assert problem.startswith("calendars.uk-office.hours:") and why in problem


def test_a_day_may_be_closed_or_split() -> None:
    assert parse_with_monday("closed").calendars["uk-office"].hours["mon"] == "closed"
    assert parse_with_monday("08:00-12:00,13:00-17:30")
