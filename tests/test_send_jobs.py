"""One send job per inbound email: the acknowledgement and the staff notification that
processing one email wrote travel to the sender as ONE broker message (one enqueue, one
fetch, one ack instead of two of each). Each email of a job is still sent on its own:
one that fails does not hold the others back, and the job is retried until every one
is sent, none twice."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq import Message, Worker
from dramatiq.brokers.stub import StubBroker

from postdesk.app import ActorDispatch
from postdesk.outbound.transport import TemporaryFailure
from postdesk.workflow.tasks.actors import register_actors
from tests.smarthost import Sink, Smarthost
from tests.support import make_email


def stub_actors(on_outbox: Any) -> tuple[StubBroker, Any]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    actors = register_actors(broker, "jobs-test", on_inbound=lambda raw_id: None,
                             on_outbox=on_outbox)
    return broker, actors


def test_a_job_of_several_emails_sends_each_and_retries_only_after_trying_all() -> None:
    calls: list[int] = []
    failures = {1: 1}   # outbox 1 fails once, as a smarthost's 451 would

    def on_outbox(outbox_id: int) -> None:
        calls.append(outbox_id)
        if failures.get(outbox_id):
            failures[outbox_id] -= 1
            raise TemporaryFailure("451 try later")

    broker, actors = stub_actors(on_outbox)
    # The retry comes after the actor's minimum backoff; this test need not wait 1 s.
    actors.send_outbox.options["min_backoff"] = 10
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        actors.send_outbox.send([1, 2])
        broker.join("jobs-test-outbound", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    # 2 went out although 1 failed first; the retried job tried both again (the real
    # sender finds 2 already sent: its claim makes that a no-op).
    assert calls == [1, 2, 1, 2]
    assert failures == {1: 0}


def test_a_job_of_one_email_is_still_a_plain_id() -> None:
    broker, actors = stub_actors(lambda outbox_id: None)
    ActorDispatch(actors).outbox(7)
    ActorDispatch(actors).outbox(8, 9)
    ActorDispatch(actors).outbox()   # nothing to send: no job
    queue = broker.queues["jobs-test-outbound"]
    args = []
    while not queue.empty():
        args.append(Message.decode(queue.get_nowait()).args)
    assert args == [(7,), ([8, 9],)]


@pytest.mark.backends("sqlite")
def test_processing_one_email_enqueues_one_send_job_for_both_emails_it_wrote(
        make_desk: Any) -> None:
    sink = Sink()
    with Smarthost(sink) as host:
        desk = make_desk(extra=host.config(), workers=False)
        desk.send(make_email(subject="Checkout broken"))
        [raw] = desk.raws()
        desk.app.handle_inbound(raw["id"])
        queue = desk.app.broker.queues[f"{desk.config.desk.queue_namespace}-outbound"]
        assert queue.qsize() == 1
        written = {o["template"]: o["id"] for o in desk.outbox()}
        assert set(written) == {"acknowledgement", "staff_notification"}
        # The job sends both, once each.
        desk.app.start_workers()
        desk.wait_settled()
    assert {o["status"] for o in desk.outbox()} == {"sent"}
    assert sorted(sink.message_ids()) == sorted(o["message_id"] for o in desk.outbox())
