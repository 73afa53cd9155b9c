"""The deployment files agree with the code: docker-compose commands are real postdesk
subcommands; the example config is valid; the package has its console script."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
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


# --- deployment files (docker-compose.yml, Dockerfile, deploy/) -----------------------------

def compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose` (its Python predecessor)."""
    import shutil
    import subprocess

    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


PROFILES = {"default": [], "rabbitmq": ["rabbitmq"], "dev": ["dev"], "imap": ["imap"]}


@pytest.mark.parametrize("profile", list(PROFILES))
def test_docker_compose_config_passes_and_every_service_runs_a_real_subcommand(
        profile: str, tmp_path: Path) -> None:
    import os
    import subprocess

    cli = compose_cli()
    if cli is None:
        if os.environ.get("POSTDESK_REQUIRE_SERVICES") == "1":
            pytest.fail("neither `docker compose` nor `docker-compose` is installed")
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    args = [arg for name in PROFILES[profile] for arg in ("--profile", name)]
    env = {**os.environ, "POSTDESK_SECRET": "compose-check"}
    if profile == "dev":
        env["POSTDESK_TOML"] = "./deploy/postdesk.dev.toml"
    proc = subprocess.run([*cli, "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # `docker compose` prints only the active profiles' services; `docker-compose` 1.x
    # prints all, each with its `profiles`.
    services = {name: s for name, s in yaml.safe_load(proc.stdout)["services"].items()
                if not s.get("profiles") or set(s["profiles"]) & set(PROFILES[profile])}
    expected = {"postgres", "redis", "migrate", "smtp", "worker", "scheduler",
                *{"rabbitmq": ["rabbitmq"], "dev": ["mailpit"], "imap": ["imap"]}.get(
                    profile, [])}
    assert set(services) == expected
    parser = build_parser()
    for name, service in services.items():
        if service.get("image") != "postdesk:latest":
            continue
        parsed = parser.parse_args(service["command"])
        assert callable(parsed.fn), name
        mount = service["volumes"][0]
        source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
        assert Path(source).name == ("postdesk.dev.toml" if profile == "dev"
                                     else "postdesk.toml")
        if name == "migrate":
            continue
        test = " ".join(service["healthcheck"]["test"])
        assert f"postdesk status --component {service['command'][0]}" in test, name
        # The health check's own command line is a real one too.
        check = parser.parse_args(["status", "--component", service["command"][0]])
        assert check.fn.__name__ == "cmd_status"
    if profile == "dev":
        assert "8025" in str(services["mailpit"]["ports"])


def test_dockerfile_is_slim_non_root_with_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.split(None, 1) for line in dockerfile.splitlines()
             if line and not line.startswith((" ", "#"))]
    instructions = [parts[0] for parts in lines]
    assert lines[0][1].endswith("-slim")
    user = [parts[1].strip() for parts in lines if parts[0] == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in instructions
    assert "postdesk status" in dockerfile
    # Dependencies are installed from pyproject.toml alone, before the code is copied.
    copies = [parts[1] for parts in lines if parts[0] == "COPY"]
    assert copies[0].startswith("pyproject.toml") and copies[1].startswith(". ")
    assert instructions.index("USER") > instructions.index("RUN")


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", "data/", "*.db", "secret.key", ".git", "deploy/postdesk.toml",
            "postdesk.toml"} <= patterns


def test_the_production_example_config_is_valid_and_production_shaped() -> None:
    config = parse_config((ROOT / "deploy" / "postdesk.toml.example").read_text(), environ={})
    assert config.smtp_out is not None and config.smtp_out.password_env
    assert config.smtp_in.host == "0.0.0.0"
    assert config.desk.staff_require_dkim is True
    assert config.desk.database_url.startswith("postgresql")
    dev = parse_config((ROOT / "deploy" / "postdesk.dev.toml").read_text(), environ={})
    assert dev.smtp_out is not None and dev.smtp_out.host == "mailpit"
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./deploy/postdesk.toml" in compose
