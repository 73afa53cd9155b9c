"""The Dramatiq broker named by ``desk.broker_url``: ``stub://`` (in-process, embedded
default), ``redis://...`` or ``amqp://...``."""

from __future__ import annotations

from collections.abc import Callable

from dramatiq import Broker
from dramatiq.brokers.stub import StubBroker

from postdesk.workflow.rules.errors import UserError


class BrokerUrlError(UserError, ValueError):
    pass


def make_broker(url: str) -> Broker:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "stub":
        return StubBroker()
    if scheme in ("redis", "rediss"):
        try:
            from dramatiq.brokers.redis import RedisBroker
        except ImportError:
            raise BrokerUrlError("desk.broker_url: install postdesk[redis] for redis://") from None
        # RedisBroker.__init__ is unannotated (dramatiq types only part of its API);
        # it is called through its documented type so the call is checked.
        redis_broker: Callable[..., Broker] = RedisBroker
        return redis_broker(url=url)
    if scheme in ("amqp", "amqps"):
        try:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker
        except ImportError:
            raise BrokerUrlError(
                "desk.broker_url: install postdesk[rabbitmq] for amqp://") from None
        return RabbitmqBroker(url=url)
    raise BrokerUrlError(
        f"desk.broker_url: unknown broker {url!r} (use stub://, redis://... or amqp://...)")
