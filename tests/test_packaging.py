"""The deployment files agree with the code: docker-compose commands are real postdesk
subcommands; the example config is valid; the package has its console script."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from postdesk.cli import build_parser
from postdesk.workflow.rules.config import parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_run_real_postdesk_subcommands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "smtp", "worker", "scheduler"} <= set(services)
    parser = build_parser()
    postdesk_services = {name: s for name, s in services.items()
                         if s.get("image") == "postdesk:latest"}
    assert {"smtp", "worker", "scheduler", "migrate"} <= set(postdesk_services)
    for name, service in postdesk_services.items():
        args = parser.parse_args(service["command"])
        assert callable(args.fn), name
    for name in ("postgres", "redis", "smtp", "worker", "scheduler"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["postdesk"]' in dockerfile


def test_example_config_is_valid_and_matches_contract_tables() -> None:
    text = (ROOT / "postdesk" / "example.toml").read_text()
    cfg = parse_config(text, environ={})
    assert cfg.desk.support_addresses == ["support@desk.example"]
    assert cfg.plans["enterprise"].calendar_for("P1") == "always"
    assert set(tomllib.loads(text)) >= {"desk", "smtp_in", "calendars", "plans", "orgs",
                                        "staff", "rota", "digest", "scheduler"}


def test_pyproject_declares_console_script_and_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["postdesk"] == "postdesk.cli:main"
    assert {"postgres", "redis", "rabbitmq", "dev"} <= set(project["optional-dependencies"])
    deps = " ".join(project["dependencies"])
    for required in ("aiosmtpd", "imapclient", "mail-parser", "sqlalchemy", "jinja2",
                     "dramatiq"):
        assert required in deps
