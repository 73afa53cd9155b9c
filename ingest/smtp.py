"""SMTP ingest (aiosmtpd). The server only moves bytes into ``accept``:

- RCPT TO must be a support address (plus-addressed forms included), else 550: never
  an open relay;
- a message over ``max_message_bytes`` gets 552 (aiosmtpd's data_size_limit);
- on DATA the raw message is committed before 250 is answered; if that fails the
  client gets 451 and retries later. Database work runs in a thread so it never blocks
  the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

from postdesk.ingest.accept import AcceptFn, Envelope
from postdesk.mail.tokens import base_address

log = logging.getLogger("postdesk.smtp")


class IngestHandler:
    def __init__(self, support_addresses: Iterable[str], accept: AcceptFn):
        self.support_addresses = {a.lower() for a in support_addresses}
        self.accept = accept

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if base_address(address) not in self.support_addresses:
            log.info("refused RCPT TO:<%s> from %s", address, session.peer)
            return "550 5.7.1 Relaying denied: not a support address here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession,
                          envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content or b""
        env = Envelope(mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos))
        try:
            result = await asyncio.to_thread(self.accept, raw, env, "smtp")
        except Exception:
            log.exception("could not store message from %s: answering 451", envelope.mail_from)
            return "451 4.3.0 Temporary storage failure, please try again later"
        return f"250 2.0.0 OK: queued as raw-{result.raw_id}"


class SmtpServer:
    def __init__(self, host: str, port: int, max_message_bytes: int,
                 handler: IngestHandler):
        self.controller = Controller(handler, hostname=host, port=port,
                                     data_size_limit=max_message_bytes,
                                     server_hostname="postdesk", ready_timeout=10)

    @property
    def address(self) -> tuple[str, int]:
        return self.controller.hostname, self.controller.port

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
