"""An aiosmtpd sink standing in for the smarthost, with knobs for the faults postdesk
must survive: a 4xx to the first N emails, a chosen answer to QUIT, a dropped connection
after an accepted DATA. Only aiosmtpd's public handler hooks are used."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller

from tests.support import free_port


class Sink:
    def __init__(self, *, quit_reply: str | None = None, refuse_first: int = 0,
                 drop_after_data: bool = False,
                 on_quit: Callable[[], None] | None = None,
                 on_stored: Callable[[bytes], None] | None = None):
        self.quit_reply = quit_reply
        self.refuse_first = refuse_first
        self.drop_after_data = drop_after_data
        self.on_quit = on_quit
        # called with each email stored, before its 250 is answered
        self.on_stored = on_stored
        self.messages: list[bytes] = []
        # per message: when it arrived (time.monotonic) and the client's (host, port),
        # which tells the messages of one connection apart from another's
        self.arrivals: list[float] = []
        self.peers: list[Any] = []
        self.refused = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            if self.refused < self.refuse_first:
                self.refused += 1
                return "451 4.3.0 Try again later"
            self.messages.append(envelope.original_content)
            self.arrivals.append(time.monotonic())
            self.peers.append(session.peer)
        if self.on_stored is not None:
            self.on_stored(envelope.original_content)
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        if self.on_quit is not None:
            self.on_quit()
        if self.drop_after_data:
            server.transport.abort()   # the connection drops instead of any answer
        return self.quit_reply or "221 Bye"

    def message_ids(self) -> list[str]:
        with self._lock:
            return [str(message_from_bytes(m)["Message-ID"]) for m in self.messages]


class Smarthost:
    def __init__(self, sink: Sink):
        self.sink = sink
        self.port = free_port()
        self.controller = Controller(sink, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Smarthost:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def config(self) -> str:
        return (f'\n[smtp_out]\nhost = "127.0.0.1"\nport = {self.port}\nstarttls = false\n'
                f'from_address = "support@desk.example"\ntimeout = 10\n')
