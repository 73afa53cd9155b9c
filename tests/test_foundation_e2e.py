"""The foundation path over real SMTP, on SQLite+StubBroker and PostgreSQL+Redis/RabbitMQ:
email -> raw store -> process_inbound -> ticket -> acknowledgement in the outbox -> sent."""

from __future__ import annotations

import email
import smtplib
import threading
from email import policy

import pytest
from sqlalchemy import text

from tests.support import make_email, wait_for


def _ticket_count(desk) -> int:
    return len(desk.tickets())


def test_email_becomes_ticket_and_acknowledgement(make_desk):
    desk = make_desk()
    msg = make_email(subject="Checkout page is slow")
    desk.send(msg)
    desk.wait_settled()

    tickets = desk.tickets()
    assert len(tickets) == 1
    ticket = tickets[0]
    assert ticket["ref"] == "PD-1"
    assert ticket["org"] == "clientco"
    assert ticket["requester"] == "alice@client.example"
    assert ticket["subject"] == "Checkout page is slow"

    [ack] = desk.acks()
    assert ack["to"] == ["alice@client.example"]
    assert "[PD-1]" in ack["subject"]
    assert ack["in_reply_to"] == msg["Message-ID"]
    assert ack["template"] == "acknowledgement"
    assert ack["ticket"] == "PD-1"
    assert ack["status"] == "sent"

    sent = email.message_from_bytes(desk.outbox_raw(ack["id"]), policy=policy.default)
    assert sent["Auto-Submitted"] == "auto-replied"
    assert sent["X-Auto-Response-Suppress"] == "All"
    assert sent["Reply-To"].addresses[0].addr_spec == "support@desk.example"
    assert sent["In-Reply-To"] == msg["Message-ID"]
    assert msg["Message-ID"] in sent["References"]
    assert sent.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in sent.iter_parts()] == ["text/plain", "text/html"]


def test_reply_threads_and_new_subject_makes_second_ticket(make_desk):
    desk = make_desk()
    first = make_email(subject="Login fails")
    desk.send(first)
    desk.wait_settled()
    [ack] = desk.acks()

    reply = make_email(subject=f"Re: {ack['subject']}", body="More detail: error 500.",
                       in_reply_to=ack["message_id"],
                       references=f"{first['Message-ID']} {ack['message_id']}")
    desk.send(reply)
    desk.wait_settled()
    assert _ticket_count(desk) == 1
    shown = desk.ticket("PD-1")
    assert [m["direction"] for m in shown["messages"]] == ["in", "out", "in"]
    assert shown["messages"][2]["message_id"] == reply["Message-ID"]

    desk.send(make_email(subject="Another problem: invoices"))
    desk.wait_settled()
    tickets = desk.tickets()
    assert [t["subject"] for t in tickets] == ["Login fails", "Another problem: invoices"]
    assert len(desk.acks()) == 2  # a reply is not acknowledged again


def test_unknown_sender_is_quarantined_without_reply(make_desk):
    desk = make_desk()
    desk.send(make_email(sender="mallory@elsewhere.example", subject="Let me in"))
    desk.wait_settled()
    assert desk.tickets() == []
    assert desk.acks() == []
    # Only the polite notice (issue 5), at most one a day per address.
    assert [o["template"] for o in desk.outbox()] == ["unknown_sender"]
    desk.send(make_email(sender="mallory@elsewhere.example", subject="Let me in again"))
    desk.wait_settled()
    assert [o["template"] for o in desk.outbox()] == ["unknown_sender"]
    [raw, _] = desk.raws()
    assert raw["status"] == "quarantined"
    assert raw["reason"] == "unknown_sender"
    assert raw["from"] == "mallory@elsewhere.example"


def test_relay_refused_with_550_and_oversize_with_552(make_desk):
    desk = make_desk(max_bytes=50_000)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        desk.send(make_email(), rcpt=["someone@elsewhere.example"])
    code, _ = refused.value.recipients["someone@elsewhere.example"]
    assert code == 550

    big = make_email(body="x" * 80_000)
    with pytest.raises(smtplib.SMTPResponseException) as too_big:
        desk.send(big)
    assert too_big.value.smtp_code == 552
    assert desk.raws() == []


def test_plus_addressed_support_address_is_accepted(make_desk):
    desk = make_desk()
    refused = desk.send(make_email(), rcpt=["support+anything@desk.example"])
    assert refused == {}
    desk.wait_settled()
    assert _ticket_count(desk) == 1


def test_same_email_twice_makes_one_ticket_one_ack(make_desk):
    desk = make_desk()
    msg = make_email(subject="Duplicate me")
    desk.send(msg)
    desk.send(msg)                       # byte-identical: same raw message
    resent = make_email(subject="Duplicate me", message_id=msg["Message-ID"],
                        body="Hello, it broke. (sent again by a retrying MTA)")
    desk.send(resent)                    # different bytes, same Message-ID
    desk.wait_settled()
    assert _ticket_count(desk) == 1
    assert len(desk.acks()) == 1
    statuses = sorted(r["status"] for r in desk.raws())
    assert statuses == ["duplicate", "processed"]


def test_concurrent_duplicate_deliveries_make_one_ticket(make_desk):
    desk = make_desk()
    msgs = [make_email(subject="Race", message_id="<race-1@client.example>",
                       body=f"copy {i}") for i in range(6)]
    threads = [threading.Thread(target=desk.send, args=(m,)) for m in msgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    desk.wait_settled()
    assert _ticket_count(desk) == 1
    assert len(desk.acks()) == 1
    assert sorted(r["status"] for r in desk.raws()).count("processed") == 1


def test_redelivered_jobs_change_nothing(make_desk):
    """Dramatiq delivers at least once: running both actors again is harmless."""
    desk = make_desk()
    desk.send(make_email())
    desk.wait_settled()
    raw_id = desk.raws()[0]["id"]
    outbox_id = desk.acks()[0]["id"]
    desk.app.actors.process_inbound.send(raw_id)
    desk.app.actors.send_outbox.send(outbox_id)
    desk.wait_settled()
    maildir = desk.app.data_dir / "outbox" / "new"
    wait_for(lambda: len(list(maildir.iterdir())) == len(desk.outbox()), 30,
             what="one maildir file per outbox email")
    assert _ticket_count(desk) == 1
    assert {o["status"] for o in desk.outbox()} == {"sent"}
    assert len(list(maildir.iterdir())) == len(desk.outbox())


def test_storage_failure_answers_451_then_resend_makes_one_ticket(make_desk, backend_kind):
    desk = make_desk(lock_timeout="1s")
    msg = make_email(subject="During an outage")
    with outage(desk, backend_kind):
        with pytest.raises(smtplib.SMTPDataError) as temp:
            desk.send(msg)
        assert temp.value.smtp_code == 451
    desk.send(msg)                         # the client's MTA retries after recovery
    desk.wait_settled()
    assert _ticket_count(desk) == 1
    assert len(desk.acks()) == 1


class outage:  # noqa: N801 - reads as a phrase: `with outage(desk, kind):`
    """Make the real database refuse writes: SQLite locked by another writer (the
    lock timeout is 1 s); PostgreSQL refusing connections with all sessions killed."""

    def __init__(self, desk, kind: str):
        self.desk, self.kind = desk, kind

    def __enter__(self) -> None:
        engine = self.desk.app.engine
        if self.kind == "sqlite":
            import sqlite3

            self.conn = sqlite3.connect(engine.url.database, isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            name = engine.url.database
            admin = engine.url.set(database="postgres").render_as_string(hide_password=False)
            self.admin = psycopg.connect(admin.replace("+psycopg", ""), autocommit=True)
            self.admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            self.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            engine.dispose()

    def __exit__(self, *exc: object) -> None:
        if self.kind == "sqlite":
            self.conn.execute("ROLLBACK")
            self.conn.close()
        else:
            name = self.desk.app.engine.url.database
            self.admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            self.admin.close()
            self.desk.app.engine.dispose()


def test_schema_is_migrated_not_created(make_desk):
    desk = make_desk(smtp=False, workers=False)
    with desk.app.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    from postdesk.storage.migrate import head_revision

    assert version == head_revision()
