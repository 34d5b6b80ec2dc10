"""The worker sends its events in batches: many per message, in seq order, none twice,
with no more delay than the batch interval, and still in order through an outage."""

from __future__ import annotations

import threading
import time

from workers.events import BufferedSink, ControlQueueSink
from workers.protocol import (
    APPLY_EVENTS_TASK,
    CONTROL_QUEUE,
    EVENT_BATCH_MAX_EVENTS,
    EventType,
    JobEvent,
    event_batch_items,
)


def _event(seq: int, event_type: EventType = EventType.METRIC, **payload) -> JobEvent:
    return JobEvent(job_id=7, attempt=1, seq=seq, type=event_type, payload=payload or {"step": seq})


class BatchRecorder:
    """A sink that takes batches (as ControlQueueSink does) and remembers each message."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, list[JobEvent]]] = []
        self.down = threading.Event()
        self.refused = 0

    def send(self, event: JobEvent) -> None:
        self.send_batch([event])

    def send_batch(self, events) -> None:
        if self.down.is_set():
            self.refused += 1
            raise ConnectionError("broker away")
        self.messages.append((time.monotonic(), list(events)))

    def flush(self, timeout: float) -> bool:
        return True

    @property
    def seqs(self) -> list[int]:
        return [event.seq for _, batch in self.messages for event in batch]


def test_a_backlog_goes_out_in_full_batches_in_seq_order():
    target = BatchRecorder()
    target.down.set()
    sink = BufferedSink(target, first_retry_seconds=0.01, max_retry_seconds=0.05)
    for seq in range(1000):
        sink.send(_event(seq))
    target.down.clear()
    assert sink.flush(10)
    assert target.seqs == list(range(1000))  # each once, in order
    sizes = [len(batch) for _, batch in target.messages]
    assert sizes == [EVENT_BATCH_MAX_EVENTS] * 5 and sink.messages == 5
    sink.stop()


def test_a_lone_event_goes_out_at_once():
    target = BatchRecorder()
    sink = BufferedSink(target, batch_seconds=1.0)
    time.sleep(0.05)
    sent_at = time.monotonic()
    sink.send(_event(0, EventType.CHECKPOINT, key="k"))
    assert sink.flush(5)
    assert target.messages[0][0] - sent_at < 0.5  # not held back for the batch interval
    sink.stop()


def test_a_busy_job_sends_one_message_per_batch_interval():
    """1,000 events/s for 1 s with a 50 ms interval: about 20 messages, not 1,000, and no
    event waits much longer than the interval."""
    target = BatchRecorder()
    sink = BufferedSink(target, batch_seconds=0.05)
    emitted: dict[int, float] = {}
    start = time.monotonic()
    for seq in range(1000):
        delay = start + seq / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        emitted[seq] = time.monotonic()
        sink.send(_event(seq))
    assert sink.flush(5)
    assert target.seqs == list(range(1000))
    assert 10 <= len(target.messages) <= 40, len(target.messages)
    waits = sorted(sent - emitted[e.seq] for sent, batch in target.messages for e in batch)
    assert waits[int(0.95 * len(waits))] < 0.2
    sink.stop()


def test_a_batch_stays_under_its_size_in_bytes():
    target = BatchRecorder()
    target.down.set()
    sink = BufferedSink(target, batch_bytes=10_000, first_retry_seconds=0.01)
    for seq in range(20):
        sink.send(_event(seq, EventType.LOG, message="x" * 3000))
    target.down.clear()
    assert sink.flush(10)
    assert target.seqs == list(range(20))
    assert all(len(batch) <= 3 for _, batch in target.messages)
    sink.stop()


def test_an_event_bigger_than_a_batch_still_goes_out_alone():
    target = BatchRecorder()
    sink = BufferedSink(target, batch_bytes=1000)
    sink.send(_event(0, EventType.FINISHED, result={"report": "y" * 5000}))
    assert sink.flush(5) and target.seqs == [0]
    sink.stop()


def test_a_full_buffer_in_an_outage_still_keeps_every_essential_event():
    target = BatchRecorder()
    target.down.set()
    sink = BufferedSink(target, capacity=5, first_retry_seconds=0.01, max_retry_seconds=0.05)
    sink.send(_event(0, EventType.STARTED))
    sink.send(_event(1, EventType.CHECKPOINT))
    for seq in range(2, 10):
        sink.send(_event(seq))
    sink.send(_event(10, EventType.FINISHED))
    target.down.clear()
    assert sink.flush(10)
    assert target.seqs == [0, 1, 8, 9, 10]
    sink.stop()


def test_re_sent_events_travel_in_seq_order_within_their_batch():
    sent: list[tuple] = []

    class App:
        def send_task(self, name, args, queue):
            sent.append((name, args, queue))

    sink = ControlQueueSink(App())
    sink.send_batch([_event(5), _event(2), _event(6)])  # 2 re-sent after a gap request
    sink.send(_event(9))
    (name, args, queue), single = sent
    assert (name, queue) == (APPLY_EVENTS_TASK, CONTROL_QUEUE)
    assert [item["seq"] for item in event_batch_items(args[0])] == [2, 5, 6]
    assert single[0] == APPLY_EVENTS_TASK and len(single[1][0]["events"]) == 1
