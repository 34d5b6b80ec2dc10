"""A broker outage never stops a job: events are buffered in order and sent when it returns.

The outage test runs an attempt against a private redis-server that it stops for 20 s in
the middle of the job, then reads the `control` queue as the broker holds it.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from celery import Celery

from tests.redisserver import PrivateRedis
from workers.events import BufferedSink, ControlQueueSink, ListSink
from workers.protocol import (
    APPLY_EVENT_TASK,
    APPLY_EVENTS_TASK,
    CONTROL_QUEUE,
    EventType,
    JobEvent,
    JobKind,
    JobSpec,
)
from workers.runtime import run_attempt


def _spec(job_id: int = 7, heartbeat: float = 0.5) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        kind=JobKind.INSPECT,
        project_id=3,
        attempt=1,
        inputs=(),
        params={"preview_records": 5},  # as the platform fills it in
        output_prefix=f"projects/3/jobs/{job_id}/attempt-1/",
        heartbeat_seconds=heartbeat,
    )


def _event(seq: int, event_type: EventType = EventType.METRIC) -> JobEvent:
    return JobEvent(job_id=7, attempt=1, seq=seq, type=event_type, payload={"step": seq})


class FlakySink(ListSink):
    """Refuses every send while `down` is set, like a broker that went away."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.refused = 0

    def send(self, event: JobEvent) -> None:
        if self.down.is_set():
            self.refused += 1
            raise ConnectionError("broker away")
        super().send(event)


def test_buffered_events_go_out_in_order_once_the_broker_is_back():
    target = FlakySink()
    target.down.set()
    sink = BufferedSink(target, first_retry_seconds=0.01, max_retry_seconds=0.05)
    for seq in range(200):
        sink.send(_event(seq))  # never raises, never blocks
    assert not sink.flush(0.2) and target.refused > 0 and sink.pending == 200
    target.down.clear()
    assert sink.flush(10)
    assert [e.seq for e in target.events] == list(range(200))
    sink.stop()


def test_a_full_buffer_drops_resendable_events_never_published_ones():
    target = FlakySink()
    target.down.set()
    sink = BufferedSink(target, capacity=5, first_retry_seconds=0.01, max_retry_seconds=0.05)
    sink.send(_event(0, EventType.STARTED))
    sink.send(_event(1, EventType.CHECKPOINT))
    for seq in range(2, 10):
        sink.send(_event(seq))
    sink.send(_event(10, EventType.FINISHED))
    target.down.clear()
    assert sink.flush(10)
    assert [e.seq for e in target.events] == [0, 1, 8, 9, 10]
    assert sink.dropped == 6
    sink.stop()


def _control_queue(server: PrivateRedis) -> list[dict]:
    """The events of the control queue's messages (one event, or a batch of them), in the
    order a consumer would take them (LPUSH / BRPOP)."""
    raw = server.client().lrange(CONTROL_QUEUE, 0, -1)
    events = []
    for message in reversed(raw):
        envelope = json.loads(message)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        task = envelope["headers"]["task"]
        if task == APPLY_EVENTS_TASK:
            events.extend(args[0]["events"])
        elif task == APPLY_EVENT_TASK:
            events.append(args[0])
        # Anything else (a worker process's own heartbeat) carries no job event.
    return events


@pytest.mark.slow
def test_a_job_rides_out_a_20_second_broker_outage(tmp_path, local_store, monkeypatch):
    # Celery prefers CELERY_BROKER_URL from the environment to the app's own setting.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    server = PrivateRedis(tmp_path / "redis", persistent=True)
    server.start()
    app = Celery("outage-test")
    app.conf.update(
        broker_url=server.url,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    store = local_store
    outage = {"seconds": 20.0}

    def train(ctx):
        """Logs a metric every 50 ms for the whole outage, then returns its step count."""
        step = 0
        started = time.monotonic()
        while time.monotonic() - started < outage["seconds"] + 6:
            ctx.metric(step, loss=1.0 / (step + 1))
            ctx.check_stop()
            time.sleep(0.05)
            step += 1
        return {"steps": step}

    def pull_the_plug():
        time.sleep(2)
        server.stop()
        time.sleep(outage["seconds"])
        server.start()

    plug = threading.Thread(target=pull_the_plug)
    plug.start()
    sink = BufferedSink(ControlQueueSink(app), first_retry_seconds=0.2, max_retry_seconds=2)
    try:
        outcome = run_attempt(_spec(), sink, store, {JobKind.INSPECT: train}, flush_seconds=60)
        plug.join()
        assert outcome == EventType.FINISHED
        assert sink.failures > 0  # the outage was real: sends were refused meanwhile
        events = _control_queue(server)
        seqs = [event["seq"] for event in events]
        assert seqs == list(range(len(seqs)))  # 0..N, each once, in order
        assert events[0]["type"] == "started" and events[-1]["type"] == "finished"
        steps = [e["payload"]["step"] for e in events if e["type"] == "metric"]
        assert steps == list(range(events[-1]["payload"]["result"]["steps"]))
        assert sum(e["type"] == "heartbeat" for e in events) >= 20  # heartbeats kept on
    finally:
        plug.join()
        sink.stop()
        server.stop()


def test_a_closed_buffer_ends_its_thread_once_drained():
    target = FlakySink()
    target.down.set()
    sink = BufferedSink(target, first_retry_seconds=0.01, max_retry_seconds=0.05)
    sink.send(_event(0))
    sink.close()  # the attempt is over; the broker is still away
    time.sleep(0.1)
    assert sink._thread.is_alive()  # it keeps trying to deliver what it holds
    target.down.clear()
    sink._thread.join(5)
    assert not sink._thread.is_alive() and [e.seq for e in target.events] == [0]
