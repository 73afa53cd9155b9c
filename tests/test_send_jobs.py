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
from postdesk.outbound.sender import send_outboxes
from postdesk.outbound.transport import ConnectionlessTransport, TemporaryFailure
from postdesk.workflow.tasks.actors import register_actors
from tests.smarthost import Sink, Smarthost
from tests.support import make_email


def stub_actors(on_outbox: Any) -> tuple[StubBroker, Any]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    actors = register_actors(broker, "jobs-test", on_inbound=lambda raw_id: None,
                             on_outbox=on_outbox)
    return broker, actors


def test_a_job_hands_its_ids_to_the_sender_together_and_is_retried_when_it_fails() -> None:
    jobs: list[list[int]] = []

    def on_outbox(outbox_ids: list[int]) -> None:
        jobs.append(outbox_ids)
        if len(jobs) == 1:
            raise TemporaryFailure("451 try later")   # one email of the job could not go

    broker, actors = stub_actors(on_outbox)
    # The retry comes after the actor's minimum backoff; this test need not wait 1 s.
    actors.send_outbox.options["min_backoff"] = 10
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        actors.send_outbox.send([1, 2])
        actors.send_outbox.send(3)   # a job of one email, as the sweeper enqueues it
        broker.join("jobs-test-outbound", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert sorted(jobs) == [[1, 2], [1, 2], [3]]


class FlakyTransport(ConnectionlessTransport):
    """Delivers to a list; the first delivery of one named email fails with a 451."""

    def __init__(self, fail_once: str):
        self.fail_once, self.delivered = fail_once, []

    def deliver(self, key: str, mail_from: str, rcpt_to: Any, raw: bytes) -> dict[str, str]:
        if self.fail_once and self.fail_once in raw.decode(errors="replace"):
            self.fail_once = ""
            raise TemporaryFailure("451 4.3.0 try later")
        self.delivered.append(key)
        return {}


@pytest.mark.backends("sqlite", "postgres-redis")
def test_one_email_failing_does_not_hold_back_the_other_and_each_is_sent_once(
        make_desk: Any) -> None:
    desk = make_desk(workers=False)
    desk.send(make_email(subject="Checkout broken"))
    [raw] = desk.raws()
    desk.app.handle_inbound(raw["id"])
    written = {o["template"]: o for o in desk.outbox()}
    ack, note = written["acknowledgement"], written["staff_notification"]
    transport = FlakyTransport(fail_once=ack["message_id"])

    first = send_outboxes(desk.app.services, transport, [ack["id"], note["id"]])
    assert first[ack["id"]].outcome == "retry" and first[note["id"]].outcome == "sent"
    states = {o["id"]: o["status"] for o in desk.outbox()}
    assert states == {ack["id"]: "queued", note["id"]: "sent"}

    again = send_outboxes(desk.app.services, transport, [ack["id"], note["id"]])
    assert again[ack["id"]].outcome == "sent"
    assert again[note["id"]].outcome == "already-sent"
    assert sorted(transport.delivered) == sorted(
        f"{o['id']}-{o['message_id'].strip('<>')}" for o in (ack, note))
    assert {o["status"] for o in desk.outbox()} == {"sent"}


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


@pytest.mark.backends("sqlite", "postgres-redis")
def test_each_email_of_a_job_is_recorded_sent_before_the_next_is_handed_over(
        make_desk: Any) -> None:
    """Between a smarthost's 250 and the commit of ``sent`` an email can be sent twice
    (a crash there, docs/faults.md): that window must not grow by the other deliveries
    of the same job."""
    desk = make_desk(workers=False)
    desk.send(make_email(subject="Checkout broken"))
    [raw] = desk.raws()
    desk.app.handle_inbound(raw["id"])
    ids = [o["id"] for o in desk.outbox()]
    seen_when_handed_over: list[dict[int, str]] = []

    class Watching(ConnectionlessTransport):
        def deliver(self, key: str, mail_from: str, rcpt_to: Any, raw: bytes
                    ) -> dict[str, str]:
            seen_when_handed_over.append({o["id"]: o["status"] for o in desk.outbox()})
            return {}

    send_outboxes(desk.app.services, Watching(), ids)
    first, second = ids
    assert seen_when_handed_over == [{first: "sending", second: "sending"},
                                     {first: "sent", second: "sending"}]


@pytest.mark.backends("sqlite", "postgres-redis")
def test_a_jobs_emails_share_one_smtp_connection_whose_quit_follows_their_records(
        make_desk: Any) -> None:
    """QUIT is one more round trip: sent before ``sent`` was committed, it widened the
    window in which a killed worker leaves a delivered email to be sent again."""
    statuses_at_quit: list[set[str]] = []
    sink = Sink(on_quit=lambda: statuses_at_quit.append(
        {o["status"] for o in desk.outbox()}))
    with Smarthost(sink) as host:
        desk = make_desk(extra=host.config(), workers=False)
        desk.send(make_email(subject="Checkout broken"))
        [raw] = desk.raws()
        desk.app.handle_inbound(raw["id"])
        ids = [o["id"] for o in desk.outbox()]
        deliveries = send_outboxes(desk.app.services, desk.app.transport, ids)
    assert [deliveries[i].outcome for i in ids] == ["sent", "sent"]
    assert len(sink.messages) == 2
    assert len(set(sink.peers)) == 1            # one connection for both
    assert statuses_at_quit == [{"sent"}]        # one QUIT, after both were recorded


@pytest.mark.backends("sqlite")
def test_an_email_refused_mid_job_closes_the_connection_and_the_next_opens_another(
        make_desk: Any) -> None:
    sink = Sink(refuse_first=1)
    with Smarthost(sink) as host:
        desk = make_desk(extra=host.config(), workers=False)
        desk.send(make_email(subject="Checkout broken"))
        [raw] = desk.raws()
        desk.app.handle_inbound(raw["id"])
        first, second = (o["id"] for o in desk.outbox())
        deliveries = send_outboxes(desk.app.services, desk.app.transport, [first, second])
        assert (deliveries[first].outcome, deliveries[second].outcome) == ("retry", "sent")
        again = send_outboxes(desk.app.services, desk.app.transport, [first, second])
    assert (again[first].outcome, again[second].outcome) == ("sent", "already-sent")
    assert len(sink.messages) == 2
    assert len(set(sink.peers)) == 2            # the 451 ended the first connection
    assert {o["status"] for o in desk.outbox()} == {"sent"}
