"""Messages waiting in each queue, read from the broker itself (what an autoscaler scales on).

- Redis: kombu keeps a queue as a list named after it, plus one list per priority step
  (`<queue>\\x06\\x16<step>`) when messages carry a priority; the depth is the sum of their
  LLENs, read in one pipeline. Reserved (unacked) messages are not waiting and not counted.
- The embedded filesystem broker (workers/filesystem_broker.py): one file per message,
  `<time>_<uuid>.<queue>.msg`; a `.partial` file is a message still being written.
- Anything else (RabbitMQ): a passive queue_declare answers the message count.

A broker that cannot be reached is a reading with `up=False`, never an exception: the
scrape still answers, with `controlplane_broker_up 0` and no depths (a depth of 0 would
tell an autoscaler to scale the workers down).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from kombu import Connection
from kombu.exceptions import ChannelError

from workers.protocol import CONTROL_QUEUE, Queue

logger = logging.getLogger(__name__)

# A scrape waits at most this long for the broker (Prometheus' own timeout is 10 s).
BROKER_TIMEOUT_SECONDS = 2.0
REDIS_PRIORITY_SEPARATOR = "\x06\x16"  # kombu.transport.redis.Channel.sep
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's default; broker_transport_options may set others


@dataclass
class BrokerReading:
    transport: str
    up: bool
    depths: dict[str, int] = field(default_factory=dict)
    error: str = ""


def monitored_queues() -> list[str]:
    """The job queues workers consume and the platform's control queue."""
    return [*(queue.value for queue in Queue), CONTROL_QUEUE]


def read_queue_depths(queues: list[str] | None = None) -> BrokerReading:
    queues = queues or monitored_queues()
    url: str = settings.CELERY["broker_url"]
    options: dict[str, Any] = dict(settings.CELERY.get("broker_transport_options", {}))
    transport = url.split("://", 1)[0]
    try:
        if transport == "filesystem":
            depths = _filesystem_depths(Path(options["data_folder_in"]), queues)
        elif transport in ("redis", "rediss"):
            depths = _redis_depths(url, options, queues)
        else:
            depths = _declared_depths(url, options, queues)
    except Exception as error:  # noqa: BLE001 - any broker failure is a reading, not a 500
        logger.warning("metrics: broker %s unreadable: %s", transport, error)
        return BrokerReading(transport, up=False, error=f"{type(error).__name__}: {error}")
    return BrokerReading(transport, up=True, depths=depths)


def _filesystem_depths(folder: Path, queues: list[str]) -> dict[str, int]:
    depths = dict.fromkeys(queues, 0)
    for name in os.listdir(folder):  # one pass over the folder for every queue
        queue, _, suffix = name.partition(".")[2].rpartition(".")
        if suffix == "msg" and queue in depths:
            depths[queue] += 1
    return depths


def _connection(url: str, options: dict[str, Any]) -> Connection:
    options = {
        **options,
        "socket_timeout": BROKER_TIMEOUT_SECONDS,
        "socket_connect_timeout": BROKER_TIMEOUT_SECONDS,
        "max_retries": 0,
    }
    return Connection(url, transport_options=options, connect_timeout=BROKER_TIMEOUT_SECONDS)


def _redis_depths(url: str, options: dict[str, Any], queues: list[str]) -> dict[str, int]:
    steps = options.get("priority_steps", REDIS_PRIORITY_STEPS)
    separator = options.get("sep", REDIS_PRIORITY_SEPARATOR)
    with _connection(url, options) as connection:
        connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
        # kombu's client adds the global_keyprefix, if one is configured, to every key.
        client = connection.default_channel.client
        with client.pipeline() as pipe:
            for queue in queues:
                for step in steps:
                    pipe.llen(f"{queue}{separator}{step}" if step else queue)
            lengths = pipe.execute()
    per_queue = len(steps)
    return {
        queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(queues)
    }


def _declared_depths(url: str, options: dict[str, Any], queues: list[str]) -> dict[str, int]:
    depths = {}
    with _connection(url, options) as connection:
        connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
        for queue in queues:
            # A passive declare of a missing queue closes its channel (AMQP): one each.
            channel = connection.channel()
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except (ChannelError, *connection.channel_errors):
                depths[queue] = 0  # not declared yet: no worker or sender has used it
            finally:
                _close_quietly(channel)
    return depths


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - a channel the broker already closed
        pass
