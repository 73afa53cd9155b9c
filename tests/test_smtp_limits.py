"""The SMTP door's limits and security (ingest.smtp with [smtp_in] limits): sessions
beyond max_sessions get 421 while the door keeps serving, recipients beyond
max_recipients get 452, SIZE= over the limit gets 552 before any DATA, idle and DATA
timeouts close a connection, STARTTLS with a certificate, require_starttls and AUTH."""

from __future__ import annotations

import select
import smtplib
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from postdesk.ingest.accept import AcceptResult, Envelope
from postdesk.ingest.smtp import DoorLimits, IngestHandler, SmtpServer
from tests.support import free_port, wait_for

SUPPORT = "support@desk.example"
LIMIT = 50_000
EMAIL = (b"From: alice@client.example\r\nTo: support@desk.example\r\nSubject: hi\r\n"
         b"Message-ID: <limits@client.example>\r\n\r\nHello\r\n")


class Capture:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.server: SmtpServer | None = None

    def accept(self, raw: bytes, envelope: Envelope, source: str) -> AcceptResult:
        self.messages.append(raw)
        return AcceptResult(raw_id=len(self.messages), created=True, status="pending")


@contextmanager
def door(limits: DoorLimits, max_recipients: int = 100) -> Iterator[tuple[int, Capture]]:
    capture = Capture()
    server = SmtpServer("127.0.0.1", free_port(), LIMIT,
                        IngestHandler([SUPPORT], capture.accept,
                                      max_recipients=max_recipients), limits)
    capture.server = server
    server.start()
    try:
        yield server.address[1], capture
    finally:
        server.stop()


def greeting(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_beyond_max_sessions_a_connection_gets_421_and_the_door_still_serves() -> None:
    with door(DoorLimits(max_sessions=100)) as (port, capture):
        idle: list[socket.socket] = []
        answers: list[bytes] = []
        try:
            for _ in range(500):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                idle.append(sock)
                answers.append(greeting(sock)[:3])
            print(f"500 idle connections: {answers.count(b'220')} greeted 220, "
                  f"{answers.count(b'421')} refused 421")
            assert answers[:100] == [b"220"] * 100
            assert answers[100] == b"421"
            assert set(answers[100:]) == {b"421"}
            # One idle client leaves; a normal client takes its place and is served.
            idle[0].close()

            def delivered() -> bool:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                        smtp.sendmail("alice@client.example", [SUPPORT], EMAIL)
                    return True
                except smtplib.SMTPConnectError:
                    return False

            wait_for(delivered, 30, 0.1, what="a normal client served")
        finally:
            for sock in idle:
                sock.close()
        assert capture.server is not None
        wait_for(lambda: capture.server.sessions.open == 0, 30, what="every session released")
    assert capture.messages == [EMAIL]


def test_an_idle_connection_is_closed_after_idle_timeout() -> None:
    with (door(DoorLimits(idle_timeout=1)) as (port, _),
          socket.create_connection(("127.0.0.1", port), timeout=30) as sock):
        assert greeting(sock).startswith(b"220")
        # The server closes it (recv returns b""); a 30 s socket timeout fails the test.
        assert sock.recv(1024) == b""


def test_a_data_phase_longer_than_data_timeout_gets_421_and_is_not_accepted() -> None:
    with (door(DoorLimits(data_timeout=1, idle_timeout=60)) as (port, capture),
          socket.create_connection(("127.0.0.1", port), timeout=30) as sock):
        reader = sock.makefile("rb")
        reader.readline()
        for line in (b"HELO client.example", b"MAIL FROM:<alice@client.example>",
                     f"RCPT TO:<{SUPPORT}>".encode(), b"DATA"):
            sock.sendall(line + b"\r\n")
            reader.readline()
        answer = b""
        for _ in range(60):   # trickle a line every half second, never finishing
            sock.sendall(b"still typing\r\n")
            if select.select([sock], [], [], 0.5)[0]:
                answer = reader.readline()
                break
    assert answer.startswith(b"421")
    assert capture.messages == []


def test_the_101st_recipient_of_a_transaction_gets_452() -> None:
    with (door(DoorLimits(), max_recipients=100) as (port, _),
          smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp):
        smtp.ehlo()
        smtp.mail("alice@client.example")
        codes = [smtp.rcpt(f"support+{n}@desk.example")[0] for n in range(200)]
    print(f"200 recipients: {codes.count(250)} accepted, {codes.count(452)} got 452")
    assert codes[:100] == [250] * 100
    assert codes[100] == 452
    assert set(codes[100:]) == {452}


def test_mail_from_with_size_over_the_limit_gets_552_before_any_data() -> None:
    with (door(DoorLimits()) as (port, capture),
          smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp):
        smtp.ehlo()
        assert int(smtp.esmtp_features["size"]) == LIMIT
        code, _ = smtp.mail("alice@client.example", options=[f"SIZE={LIMIT + 1}"])
        assert code == 552
        assert smtp.mail("alice@client.example", options=[f"SIZE={LIMIT}"])[0] == 250
    assert capture.messages == []


# --- TLS and AUTH -----------------------------------------------------------------------

def client_context(cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


def test_a_client_delivers_over_starttls_with_the_configured_certificate(
        certificate: tuple[str, str]) -> None:
    cert, key = certificate
    with (door(DoorLimits(tls_cert=cert, tls_key=key)) as (port, capture),
          smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp):
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=client_context(cert))
        cipher = smtp.sock.cipher()   # type: ignore[union-attr]
        smtp.ehlo()
        smtp.sendmail("alice@client.example", [SUPPORT], EMAIL)
    assert cipher is not None
    assert capture.messages == [EMAIL]
    # the session was counted once through STARTTLS and released when it closed
    assert capture.server is not None
    wait_for(lambda: capture.server.sessions.open == 0, 30, what="the session released")


def test_with_require_starttls_a_plain_mail_from_gets_530(
        certificate: tuple[str, str]) -> None:
    cert, key = certificate
    limits = DoorLimits(tls_cert=cert, tls_key=key, require_starttls=True)
    with (door(limits) as (port, capture),
          smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp):
        smtp.ehlo()
        assert smtp.mail("alice@client.example")[0] == 530
        smtp.starttls(context=client_context(cert))
        smtp.ehlo()
        smtp.sendmail("alice@client.example", [SUPPORT], EMAIL)
    assert capture.messages == [EMAIL]


def test_with_auth_required_mail_needs_a_login_and_a_wrong_password_is_refused(
        certificate: tuple[str, str]) -> None:
    cert, key = certificate
    limits = DoorLimits(tls_cert=cert, tls_key=key, auth_required=True,
                        credentials=("mx-relay", "s3cret"))
    with door(limits) as (port, capture):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.starttls(context=client_context(cert))
            smtp.ehlo()
            assert smtp.mail("alice@client.example")[0] == 530
            smtp.rset()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("mx-relay", "wrong")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.starttls(context=client_context(cert))
            smtp.login("mx-relay", "s3cret")
            smtp.sendmail("alice@client.example", [SUPPORT], EMAIL)
    assert capture.messages == [EMAIL]


def test_door_limits_come_from_the_config_with_credentials_from_named_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from postdesk.workflow.rules.config import SmtpInConfig
    from postdesk.workflow.rules.errors import UserError

    cfg = SmtpInConfig(max_sessions=5, idle_timeout="30s", data_timeout="2m",
                       tls_cert="c.pem", tls_key="k.pem", auth_required=True,
                       auth_username_env="PD_TEST_USER", auth_password_env="PD_TEST_PASS")
    with pytest.raises(UserError, match="PD_TEST_USER"):
        DoorLimits.from_config(cfg)
    monkeypatch.setenv("PD_TEST_USER", "relay")
    monkeypatch.setenv("PD_TEST_PASS", "pw")
    limits = DoorLimits.from_config(cfg)
    assert (limits.max_sessions, limits.idle_timeout, limits.data_timeout) == (5, 30, 120)
    assert limits.credentials == ("relay", "pw") and limits.auth_required
    with pytest.raises(ValueError, match="max_recipients"):
        SmtpInConfig(max_recipients=99)


@pytest.mark.parametrize(("table", "key"), [
    ('require_starttls = true', "smtp_in.require_starttls"),
    ('tls_cert = "c.pem"', "smtp_in.tls_key"),
    ('auth_required = true\ntls_cert = "c.pem"\ntls_key = "k.pem"',
     "smtp_in.auth_password_env"),
    ('max_recipients = 10', "smtp_in.max_recipients"),
])
def test_an_unusable_door_config_names_the_key(table: str, key: str) -> None:
    from postdesk.workflow.rules.config import ConfigError, parse_config

    text = f'[desk]\nsupport_addresses = ["{SUPPORT}"]\n[smtp_in]\n{table}\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, environ={})
    assert any(p.startswith(key) for p in err.value.problems), err.value.problems
