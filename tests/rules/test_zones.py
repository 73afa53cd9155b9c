"""The one rule for which zone a date belongs to: an org's own ``timezone`` wins, else
its plan calendar's zone; the desk's own dates follow ``[digest] timezone``."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from postdesk.workflow.rules.config import Config, parse_config
from postdesk.workflow.rules.zones import desk_zone, org_zone
from tests.support import BASECO, Backend, config_text

ZONED_ORGS = BASECO + """
[[orgs]]
slug = "tokyoco"
name = "Tokyo Co"
plan = "base"
domains = ["tokyo.example"]
timezone = "Asia/Tokyo"

[calendars.sydney-office]
timezone = "Australia/Sydney"
hours = { mon = "09:00-17:00" }

[plans.sydney]
calendar = "sydney-office"

[[orgs]]
slug = "sydneyco"
name = "Sydney Co"
plan = "sydney"
domains = ["sydney.example"]

[plans.roundtheclock]
calendar = "always"

[[orgs]]
slug = "nightco"
name = "Night Co"
plan = "roundtheclock"
domains = ["night.example"]
"""


def make_config(digest_timezone: str | None = None) -> Config:
    be = Backend("sqlite", "sqlite:///unused.db", "stub://", "pdrules")
    text = config_text(be, Path("/nonexistent/data"), smtp_port=2525, extra=ZONED_ORGS)
    if digest_timezone:
        text = text.replace("[digest]\n", f'[digest]\ntimezone = "{digest_timezone}"\n', 1)
    return parse_config(text, environ={})


@pytest.fixture(scope="module")
def config() -> Config:
    return make_config()


def test_an_orgs_own_timezone_wins_over_its_plan_calendars(config: Config) -> None:
    assert config.calendars[config.plans["base"].calendar].timezone == "Europe/London"
    assert org_zone(config, "tokyoco") == ZoneInfo("Asia/Tokyo")


def test_its_own_timezone_wins_even_when_a_plan_is_named(config: Config) -> None:
    assert org_zone(config, "tokyoco", "sydney") == ZoneInfo("Asia/Tokyo")


@pytest.mark.parametrize(("slug", "zone"), [
    ("baseco", "Europe/London"),
    ("sydneyco", "Australia/Sydney"),
    ("nightco", "UTC"),          # the always-open calendar keeps the default zone
])
def test_an_org_without_a_timezone_takes_its_plan_calendars_zone(
        config: Config, slug: str, zone: str) -> None:
    assert org_zone(config, slug) == ZoneInfo(zone)


def test_the_plan_named_by_the_caller_decides_for_an_org_without_a_timezone(
        config: Config) -> None:
    """A ticket's org row names its plan; the caller passes it along."""
    assert org_zone(config, "baseco", "sydney") == ZoneInfo("Australia/Sydney")


def test_an_org_no_longer_in_the_config_takes_the_zone_of_the_plan_named(
        config: Config) -> None:
    assert org_zone(config, "gone-co", "sydney") == ZoneInfo("Australia/Sydney")


def test_with_neither_org_nor_plan_known_the_desk_zone_decides(config: Config) -> None:
    assert org_zone(config, "gone-co") == desk_zone(config)
    assert org_zone(config, "gone-co", "retired-plan") == desk_zone(config)


def test_the_desk_zone_is_utc_by_default(config: Config) -> None:
    assert config.digest.timezone == "UTC"
    assert desk_zone(config) == ZoneInfo("UTC")


def test_the_desk_zone_is_the_digest_timezone() -> None:
    config = make_config(digest_timezone="America/New_York")
    assert desk_zone(config) == ZoneInfo("America/New_York")
    # An org's zone does not follow the desk's, and an unknown one's does.
    assert org_zone(config, "baseco") == ZoneInfo("Europe/London")
    assert org_zone(config, "gone-co") == ZoneInfo("America/New_York")
