"""The SMTP door (ingest.smtp: aiosmtpd with postdesk's handler) against aiosmtpd with a
stock handler, byte for byte: the same replies and the same message handed on for
dot-stuffing, bare line feeds, long lines, oversize messages and the transaction after
them; and the bytes committed are the bytes sent."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from postdesk.ingest.accept import AcceptResult, Envelope
from postdesk.ingest.smtp import IngestHandler, SmtpServer
from tests.support import free_port

LIMIT = 20_000
SUPPORT = "support@desk.example"


class Capture:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def accept(self, raw: bytes, envelope: Envelope, source: str) -> AcceptResult:
        self.messages.append(raw)
        return AcceptResult(raw_id=len(self.messages), created=True, status="pending")


class StockHandler:
    """aiosmtpd's reference: its own DATA, the same answers as IngestHandler."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        return f"250 2.0.0 OK: queued as raw-{len(self.messages)}"


@contextmanager
def door() -> Iterator[tuple[int, Capture]]:
    capture = Capture()
    server = SmtpServer("127.0.0.1", free_port(), LIMIT, IngestHandler([SUPPORT],
                                                                       capture.accept))
    server.start()
    try:
        yield server.address[1], capture
    finally:
        server.stop()


@contextmanager
def stock() -> Iterator[tuple[int, StockHandler]]:
    handler = StockHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(),
                            data_size_limit=LIMIT, server_hostname="postdesk",
                            ready_timeout=10)
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


def reply(reader: Any) -> str:
    lines = []
    while True:
        line = reader.readline().decode()
        lines.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)


def transactions(port: int, payloads: list[bytes]) -> list[str]:
    """Send each payload as the DATA of one transaction on one connection (the payload
    ends with the terminating <CRLF>.<CRLF>); the replies to DATA and to its end."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reply(reader)
        sock.sendall(b"EHLO client.example\r\n")
        reply(reader)
        for payload in payloads:
            sock.sendall(b"MAIL FROM:<a@client.example>\r\n")
            reply(reader)
            sock.sendall(f"RCPT TO:<{SUPPORT}>\r\n".encode())
            reply(reader)
            sock.sendall(b"DATA\r\n")
            out.append(reply(reader))
            sock.sendall(payload)
            out.append(reply(reader))
        sock.sendall(b"QUIT\r\n")
        reply(reader)
    return out


HEAD = b"From: a@client.example\r\nTo: support@desk.example\r\nSubject: t\r\n\r\n"
CASES = {
    "plain": HEAD + b"Hello\r\n.\r\n",
    "dot-stuffed": HEAD + b"..leading dot\r\n..\r\n...\r\nend\r\n.\r\n",
    "bare line feeds": HEAD + b"one\ntwo\r\nthree\n\r\n.\r\n",
    "cr inside": HEAD + b"a\rb\r\n.\r\n",
    "no body": b".\r\n",
    "999-byte line": HEAD + b"x" * 997 + b"\r\n.\r\n",
    "1000-byte line": HEAD + b"x" * 998 + b"\r\n.\r\n",
    "1001-byte line": HEAD + b"x" * 999 + b"\r\n.\r\n",
    "long line": HEAD + b"y" * 5000 + b"\r\nafter\r\n.\r\n",
    "dot line in long line": HEAD + b"z" * 3000 + b".\r\n.\r\n",
    "oversize": HEAD + (b"w" * 70 + b"\r\n") * 400 + b".\r\n",
    "oversize and long line": HEAD + (b"w" * 70 + b"\r\n") * 400 + b"v" * 3000
    + b"\r\n.\r\n",
    "8-bit": HEAD + "Grüße aus Köln\r\n".encode() + b"\xff\xfe\r\n.\r\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_data_is_answered_and_handed_on_as_aiosmtpd_does(name: str) -> None:
    # The case, then a plain email on the same connection: after a 500 or 552 the next
    # transaction must work the same way too.
    payloads = [CASES[name], CASES["plain"]]
    with stock() as (port, reference):
        expected = transactions(port, payloads)
    with door() as (port, capture):
        got = transactions(port, payloads)
    assert got == expected
    assert capture.messages == reference.messages


def test_the_bytes_handed_to_accept_are_the_bytes_sent_de_stuffed() -> None:
    body = b"".join(b"." + bytes([65 + i % 26]) * (i % 90) + b"\r\n" for i in range(300))
    message = HEAD + body
    wire = b"".join(b"." + line if line.startswith(b".") else line
                    for line in message.splitlines(keepends=True))
    with door() as (port, capture):
        replies = transactions(port, [wire + b".\r\n"])
    assert replies[-1].startswith("250 2.0.0 OK: queued as raw-1")
    assert capture.messages == [message]
