"""The smarthost's 250 to DATA is the commitment: whatever QUIT answers afterwards (451,
554, a dropped connection) the email was delivered once, is recorded ``sent`` and is
never sent again; a database error while recording it is retried in process."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest

from postdesk.outbound.transport import ConnectionlessTransport, SmtpTransport
from postdesk.scheduler import sweep_outbox
from tests.smarthost import Sink, Smarthost
from tests.support import make_email

EMAIL = b"From: support@desk.example\r\nTo: alice@client.example\r\nSubject: hi\r\n" \
        b"Message-ID: <one@desk.example>\r\n\r\nHello\r\n"

QUIT_FAULTS = {
    "quit-451": Sink(quit_reply="451 4.3.0 Local error"),
    "quit-554": Sink(quit_reply="554 5.0.0 Transaction failed"),
    "dropped-after-data": Sink(drop_after_data=True),
}


@pytest.mark.parametrize("fault", list(QUIT_FAULTS))
def test_the_transport_counts_an_accepted_data_as_delivered_whatever_quit_answers(
        fault: str) -> None:
    sink = Sink(quit_reply=QUIT_FAULTS[fault].quit_reply,
                drop_after_data=QUIT_FAULTS[fault].drop_after_data)
    with Smarthost(sink) as host:
        transport = SmtpTransport("127.0.0.1", host.port, starttls=False, timeout=10)
        refused = transport.deliver("1-one", "support@desk.example",
                                    ["alice@client.example"], EMAIL)
    assert refused == {}
    assert sink.messages == [EMAIL]


@pytest.mark.backends("sqlite", "postgres-redis")
@pytest.mark.parametrize("fault", list(QUIT_FAULTS))
def test_an_acknowledgement_answered_badly_at_quit_is_sent_once_and_recorded_sent(
        make_desk: Any, fault: str) -> None:
    sink = Sink(quit_reply=QUIT_FAULTS[fault].quit_reply,
                drop_after_data=QUIT_FAULTS[fault].drop_after_data)
    with Smarthost(sink) as host:
        desk = make_desk(extra=host.config())
        desk.send(make_email(subject="Checkout broken"))
        desk.wait_settled()
        # The sweeper finds nothing to send again, however often it runs.
        for _ in range(3):
            assert sweep_outbox(desk.app.services, desk.app.dispatch,
                                desk.config.scheduler.sweep_grace.as_timedelta()) == 0
        emails = desk.outbox()
    received = sink.message_ids()
    print(f"{fault}: emails stored {len(emails)} (acknowledgements "
          f"{len(desk.acks())}), received by the sink {len(received)}, "
          f"distinct {len(set(received))}")
    assert len(desk.acks()) == 1
    assert {e["status"] for e in emails} == {"sent"}
    assert sorted(received) == sorted(e["message_id"] for e in emails)


@pytest.mark.backends("sqlite")
def test_a_database_error_after_the_250_is_retried_in_process_not_sent_again(
        make_desk: Any, tmp_path: Any) -> None:
    """SQLite's write lock stands in for a database outage: while a second connection
    holds it, recording ``sent`` fails with OperationalError until it is released."""
    sink = Sink()
    with Smarthost(sink) as host:
        desk = make_desk(extra=host.config(), lock_timeout="1s", workers=False)
        if not desk.config.desk.database_url.startswith("sqlite"):
            pytest.skip("the write lock is SQLite's")
        desk.send(make_email(subject="Checkout broken"))
        # Process the inbound email (queues the acknowledgement) without sending it.
        raw_id = desk.raws()[0]["id"]
        desk.app.handle_inbound(raw_id)
        outbox_id = desk.acks()[0]["id"]
        db_path = desk.config.desk.database_url.removeprefix("sqlite:///")
        locker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        released = threading.Event()

        class LockingTransport(ConnectionlessTransport):
            """Delivers, then takes the database away as the 250 arrives."""

            def deliver(self, *args: Any) -> dict[str, str]:
                refused = desk.app.transport.deliver(*args)
                locker.execute("BEGIN EXCLUSIVE")
                threading.Timer(3, lambda: (locker.execute("COMMIT"), released.set())
                                ).start()
                return refused

        from postdesk.outbound.sender import send_outbox
        outcome = send_outbox(desk.app.services, LockingTransport(), outbox_id).outcome
        assert released.is_set()   # recording waited for the outage to end
        locker.close()
        assert outcome == "sent"
        assert desk.acks()[0]["status"] == "sent"
        assert send_outbox(desk.app.services, desk.app.transport,
                           outbox_id).outcome == "already-sent"
    assert len(sink.messages) == 1
