"""What an operator sees: one log line per email in and out (text or JSON), secrets never
in a log line, Prometheus metrics on /metrics, start-up warnings."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import smtplib
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from postdesk import metrics
from postdesk.logs import REDACT, JsonFormatter, register_secrets
from postdesk.startup import startup_warnings
from postdesk.workflow.rules.config import parse_config
from tests.support import free_port, make_email, wait_for

POSTDESK = [sys.executable, "-m", "postdesk.cli"]
SECRET = "the-desk-hmac-secret-4711"


def scrape(port: int) -> dict[str, float]:
    """Every sample on /metrics, keyed by name{labels} as Prometheus prints it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def json_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("multiprocess", [False, True], ids=["one-process", "multiproc-dir"])
def test_metrics_after_three_emails_and_json_logs_without_secrets(tmp_path: Path,
                                                                  multiprocess: bool) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "POSTDESK_SECRET": SECRET,
           "POSTDESK_LOG_FORMAT": "json"}
    env.pop("POSTDESK_CONFIG", None)
    if multiprocess:
        (tmp_path / "prom").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    subprocess.run([*POSTDESK, "init", "--dir", str(tmp_path)], env=env, check=True,
                   capture_output=True)
    config = tmp_path / "postdesk.toml"
    smtp_port, metrics_port = free_port(), free_port()
    config.write_text(config.read_text().replace("port = 2525", f"port = {smtp_port}")
                      + f"\n[metrics]\nport = {metrics_port}\n")
    env["POSTDESK_CONFIG"] = str(config)
    serve = subprocess.Popen([*POSTDESK, "serve"], env=env, cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def metrics_up() -> dict[str, float] | None:
            try:
                return scrape(metrics_port)
            except OSError:
                return None
        wait_for(metrics_up, 60, 0.2, what="/metrics to answer")

        def smtp_up() -> bool:
            # The door is a process of its own (postdesk/door.py), listening a moment
            # after the desk process serves /metrics.
            try:
                smtplib.SMTP("127.0.0.1", smtp_port, timeout=5).quit()
            except OSError:
                return False
            return True
        wait_for(smtp_up, 120, 0.2, what="the SMTP door to listen")
        sent = []
        for n in range(3):
            msg = make_email(sender="alice@client.example", subject=f"Problem {n}")
            sent.append(msg["Message-ID"])
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
                smtp.send_message(msg)

        def three_processed() -> dict[str, float] | None:
            samples = scrape(metrics_port)
            done = samples.get("postdesk_processing_latency_seconds_count") == 3
            return samples if done else None
        wait_for(three_processed, 60, 0.2, what="three emails processed")
        # Read again: with PROMETHEUS_MULTIPROC_DIR a scrape reads one file per metric
        # type in turn, so the scrape that saw the third latency may hold the processed
        # counter from before that email's increment (made just before the latency's).
        samples = scrape(metrics_port)
        assert samples['postdesk_emails_accepted_total{source="smtp"}'] == 3
        assert samples['postdesk_emails_processed_total{outcome="processed"}'] == 3
        assert samples['postdesk_processing_latency_seconds_bucket{le="+Inf"}'] == 3
        assert samples["postdesk_smtp_data_to_250_seconds_count"] == 3
        assert samples["postdesk_raw_pending"] == 0
        wait_for(lambda: scrape(metrics_port).get(
            'postdesk_outbound_emails_total{status="sent"}', 0) >= 3, 60, 0.2,
            what="acknowledgements sent")
        status = subprocess.run([*POSTDESK, "status", "--json"], env=env, text=True,
                                capture_output=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert SECRET not in status.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        _out, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err
    lines = json_lines(err)   # every line is one JSON object
    assert SECRET not in err
    inbound = [line for line in lines if line.get("event") == "inbound"]
    assert sorted(line["message_id"] for line in inbound) == sorted(sent)
    for line in inbound:
        assert line["sender"] == "alice@client.example"
        assert line["outcome"] == "processed" and line["ticket"].startswith("PD-")
        assert line["source"] == "smtp" and isinstance(line["ms"], int)
    outbound = [line for line in lines if line.get("event") == "outbound"]
    acks = [line for line in outbound if line["template"] == "acknowledgement"]
    assert sorted(line["recipient"] for line in acks) == ["alice@client.example"] * 3
    assert {line["status"] for line in outbound} == {"sent"}
    assert any("smtp_out is not configured" in line["msg"] for line in lines)


def test_metric_functions_count_what_happened() -> None:
    def value(name: str, **labels: str) -> float:
        from prometheus_client import REGISTRY
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("postdesk_emails_quarantined_total", reason="bounce"),
              value("postdesk_outbound_emails_total", status="bounced"),
              value("postdesk_emails_accepted_total", source="imap"),
              value("postdesk_sla_breaches_total", priority="P1"),
              value("postdesk_smtp_data_to_250_seconds_count"))
    metrics.email_processed("quarantined", "bounce", 1.5)
    metrics.email_accepted("imap:support", 0.01)   # not an SMTP DATA: no 250 timing
    from postdesk.workflow.desk.breaches import ScanResult
    metrics.observe_duty("sla_scan", ScanResult(breached=1, crossings=[("breached", "P1")]))
    after = (value("postdesk_emails_quarantined_total", reason="bounce"),
             value("postdesk_outbound_emails_total", status="bounced"),
             value("postdesk_emails_accepted_total", source="imap"),
             value("postdesk_sla_breaches_total", priority="P1"),
             value("postdesk_smtp_data_to_250_seconds_count"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1, 0]


def test_each_email_in_and_out_gets_one_log_line(sqlite_desk) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    mail_log = logging.getLogger("postdesk.mail")
    mail_log.addHandler(handler)
    old_level = mail_log.level
    mail_log.setLevel(logging.INFO)
    try:
        msg = make_email(subject="Checkout broken")
        sqlite_desk.send(msg)
        sqlite_desk.wait_settled()
        wait_for(lambda: len([r for r in sqlite_desk.outbox() if r["status"] == "sent"])
                 == len([line for line in stream.getvalue().splitlines()
                         if '"outbound"' in line]), 30, what="outbound log lines")
    finally:
        mail_log.removeHandler(handler)
        mail_log.setLevel(old_level)
    lines = json_lines(stream.getvalue())
    [inbound] = [line for line in lines if line["event"] == "inbound"]
    assert inbound["message_id"] == msg["Message-ID"]
    assert inbound["sender"] == "alice@client.example"
    assert (inbound["outcome"], inbound["reason"], inbound["ticket"]) == ("processed", None,
                                                                         "PD-1")
    outbound = [line for line in lines if line["event"] == "outbound"]
    assert sorted(line["outbox_id"] for line in outbound) == sorted(
        r["id"] for r in sqlite_desk.outbox())
    assert all(line["status"] == "sent" for line in outbound)


def test_secrets_are_masked_in_any_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_TEST_SMTP_PASSWORD", "relay-password-9001")
    config = parse_config("""
[desk]
support_addresses = ["support@desk.example"]
database_url = "postgresql+psycopg://postdesk:db-password-77@db/postdesk"
broker_url = "redis://:broker-password-55@redis:6379/0"
secret = "config-secret-abc"
[smtp_out]
host = "relay.example"
from_address = "support@desk.example"
username = "desk"
password_env = "PD_TEST_SMTP_PASSWORD"
""", environ={})
    register_secrets(config, b"file-secret-xyz")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(REDACT)
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("login with %s failed", "relay-password-9001",
                       extra={"url": "redis://:broker-password-55@redis:6379/0"})
        logger.warning("db-password-77 config-secret-abc file-secret-xyz")
        try:
            raise RuntimeError("auth failed for relay-password-9001")
        except RuntimeError:
            logger.exception("send failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    for secret in ("relay-password-9001", "broker-password-55", "db-password-77",
                   "config-secret-abc", "file-secret-xyz"):
        assert secret not in out
    assert out.count("***") >= 6


def test_start_up_warnings_name_what_would_go_nowhere() -> None:
    base = '[desk]\nsupport_addresses = ["support@desk.example"]\n'
    bare = parse_config(base, environ={})
    warnings = startup_warnings(bare, "worker")
    assert any(w.startswith("smtp_out is not configured") for w in warnings)
    assert any("has no [[staff]]" in w for w in warnings)
    assert any(w.startswith("desk.secret is not set") for w in warnings)
    # The embedded all-in-one desk generates its own secret: nothing to share.
    assert not any(w.startswith("desk.secret") for w in startup_warnings(bare, "serve"))
    staffed = parse_config(base + """secret = "shared-secret-value"
[smtp_out]
host = "relay.example"
from_address = "support@desk.example"
[[staff]]
email = "sam@agency.example"
""", environ={})
    assert startup_warnings(staffed, "worker") == [
        "desk.support_addresses: support@desk.example has no [[orgs]] configured: every "
        "sender is unknown and quarantined"]


def test_a_metrics_port_in_use_is_a_clear_error_unless_another_process_serves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from postdesk.workflow.rules.config import MetricsConfig
    from postdesk.workflow.rules.errors import UserError

    def start(cfg: MetricsConfig) -> object:
        # The port is never bound in these cases, so no sessions or clock are needed.
        return metrics.start_metrics_server(cfg, None, None)  # type: ignore[arg-type]

    assert start(MetricsConfig()) is None   # off by default
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        with pytest.raises(UserError, match=f"metrics.port: cannot listen on 127.0.0.1:{port}"):
            start(MetricsConfig(port=port))
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        assert start(MetricsConfig(port=port)) is None   # another process serves the samples
    finally:
        busy.close()
