"""``postdesk smtp`` on the embedded queue (``stub://``): nothing in its process consumes
jobs, so its door commits each email and enqueues nothing (an enqueue there only grew a
queue in memory, one job per email, for ever); ``postdesk serve``'s sweeper on the same
database processes the email. (With a shared broker the door is ``App.accept`` itself: the
deployment tests in ``tests/faults`` run ``postdesk smtp`` beside workers on Redis.)"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from postdesk.app import App
from postdesk.door import smtp_accept
from postdesk.ingest.accept import Envelope
from postdesk.storage.models import RawMessage
from tests.support import make_email

ENVELOPE = Envelope("alice@client.example", ("support@desk.example",))


def jobs_waiting(app: App) -> int:
    return sum(queue.qsize() for queue in app.broker.queues.values())


def raw_bytes(subject: str) -> bytes:
    return make_email(subject=subject).as_bytes()


@pytest.mark.backends("sqlite")
def test_the_smtp_door_on_a_stub_queue_commits_the_email_and_enqueues_no_job(
        make_desk: Any) -> None:
    app = make_desk(smtp=False, workers=False).app

    result = smtp_accept(app)(raw_bytes("printer jammed"), ENVELOPE, "smtp")

    with app.sessions() as session:
        row = session.scalar(select(RawMessage).where(RawMessage.id == result.raw_id))
        assert row is not None and row.status == "pending"
    assert jobs_waiting(app) == 0
    # The desk's own door (serve's, where workers consume the queue) does enqueue.
    app.accept(raw_bytes("printer jammed again"), ENVELOPE, "smtp")
    assert jobs_waiting(app) == 1

