"""Where a running job's events go: the `control` queue, many events per Celery message.

A job must outlive a broker outage, so the worker never sends from the training loop:

    sink = BufferedSink(ControlQueueSink(app))   # a background thread does the sending
    sink.send(event)                              # never blocks on the broker, never raises
    sink.flush(timeout=120)                       # at the end of an attempt: bounded wait

`BufferedSink` keeps the events not yet accepted by the broker in memory, in seq order,
and sends what it holds as one message (`control.apply_events`, up to
EVENT_BATCH_MAX_EVENTS events or EVENT_BATCH_MAX_BYTES): the platform applies a batch in
one transaction, which is what lets one control worker keep up with jobs that log many
metrics a second. A quiet job's event goes out at once; while events keep coming, the
sender sends at most one message per `batch_seconds` (WORKER_EVENT_BATCH_MS, 100 ms), so
the delay an event can pick up is bounded by that. Through an outage it re-sends in order with
exponential backoff. Each event keeps the seq it was numbered with, which is what makes a
re-send harmless: the platform applies (job, attempt, seq) once. The buffer is bounded;
when it is full the oldest event the platform can ask for again (metrics, progress, logs,
heartbeats: the worker's `EventLog` still holds them, see `resend_request_prefix`) is
dropped from the send queue, never an artifact, checkpoint or outcome.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from workers.protocol import (
    APPLY_EVENTS_TASK,
    CONTROL_QUEUE,
    EVENT_BATCH_MAX_BYTES,
    EVENT_BATCH_MAX_EVENTS,
    EventType,
    JobEvent,
    event_batch,
)

log = logging.getLogger(__name__)

DEFAULT_BUFFER_EVENTS = 10_000
DEFAULT_LOG_EVENTS = 50_000
# While events keep coming, one message per this many seconds at most (see the docstring).
DEFAULT_BATCH_SECONDS = 0.1
# Events that are the record of what a job produced or how it ended: never dropped from
# the send buffer nor evicted from the event log.
ESSENTIAL_TYPES = frozenset(
    {
        EventType.STARTED,
        EventType.ARTIFACT,
        EventType.CHECKPOINT,
        EventType.FINISHED,
        EventType.FAILED,
        EventType.CANCELLED,
    }
)
PUBLISHED_TYPES = frozenset({EventType.ARTIFACT, EventType.CHECKPOINT})
# What one event adds to a message besides its payload (keys, numbers, the envelope).
_EVENT_OVERHEAD_BYTES = 100


class EventSink(Protocol):
    def send(self, event: JobEvent) -> None: ...

    def flush(self, timeout: float) -> bool:
        """Wait until every event sent so far is delivered; False if `timeout` ran out."""
        ...


class BatchSink(EventSink, Protocol):
    def send_batch(self, events: Sequence[JobEvent]) -> None:
        """Deliver these events (one attempt's, in seq order) together, or raise."""
        ...


class ControlQueueSink:
    """The platform's control queue: one `control.apply_events` message per batch."""

    def __init__(self, app, *, connection=None) -> None:
        self.app = app
        # Optional: an explicit broker connection (tests and benchmarks that must not
        # follow CELERY_BROKER_URL); a worker uses the app's own producer pool.
        self._options = {"connection": connection} if connection is not None else {}

    def send(self, event: JobEvent) -> None:
        self.send_batch([event])

    def send_batch(self, events: Sequence[JobEvent]) -> None:
        self.app.send_task(
            APPLY_EVENTS_TASK, args=[event_batch(events)], queue=CONTROL_QUEUE, **self._options
        )

    def flush(self, timeout: float) -> bool:
        return True  # send() returns once the broker has the message


class ListSink:
    """Collects events in memory: for running a job handler outside Celery (tests, CLI)."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def send(self, event: JobEvent) -> None:
        self.events.append(event)

    def flush(self, timeout: float) -> bool:
        return True


class BufferedSink:
    """Sends events to another sink from a background thread, in order, through outages.

    A sink with `send_batch` gets what is queued in batches (at most `batch_events`
    events / about `batch_bytes`, one message per `batch_seconds` while events keep
    coming); any other sink gets the events one at a time.
    """

    def __init__(
        self,
        sink: EventSink | BatchSink,
        *,
        capacity: int = DEFAULT_BUFFER_EVENTS,
        first_retry_seconds: float = 0.5,
        max_retry_seconds: float = 10.0,
        batch_seconds: float = DEFAULT_BATCH_SECONDS,
        batch_events: int = EVENT_BATCH_MAX_EVENTS,
        batch_bytes: int = EVENT_BATCH_MAX_BYTES,
    ) -> None:
        if capacity < 1:
            raise ValueError("the event buffer needs room for at least one event")
        if batch_events < 1 or batch_seconds < 0:
            raise ValueError("a batch holds at least one event and waits no negative time")
        self._sink = sink
        self._capacity = capacity
        self._batching = callable(getattr(sink, "send_batch", None))
        self._batch_seconds = batch_seconds
        self._batch_events = batch_events if self._batching else 1
        self._batch_bytes = batch_bytes
        self._first_retry = first_retry_seconds
        self._max_retry = max_retry_seconds
        self._pending: collections.deque[JobEvent] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.messages = 0
        self.dropped = 0
        self.failures = 0

    # the producer side: the job's threads -----------------------------------------------
    def send(self, event: JobEvent) -> None:
        with self._changed:
            if self._closing:
                raise RuntimeError("events sent to a closed BufferedSink")
            if len(self._pending) >= self._capacity:
                self._make_room()
            self._pending.append(event)
            # Wake the sender only when it can act: it waits for a first event, or lingers
            # until its batch is full (a wake-up per event would cost a busy job's
            # training thread a GIL hand-off each time).
            if len(self._pending) == 1 or len(self._pending) >= self._batch_events:
                self._changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._deliver, name=f"events-{event.job_id}", daemon=True
                )
                self._thread.start()

    def _make_room(self) -> None:
        """Drop the oldest event the platform can have re-sent from the worker's event log."""
        for index, queued in enumerate(self._pending):
            if queued.type not in ESSENTIAL_TYPES:
                del self._pending[index]
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "event buffer of job %s is full (%d events, broker away): dropped %d "
                        "re-sendable events so far, oldest first",
                        queued.job_id,
                        self._capacity,
                        self.dropped,
                    )
                return
        # Only essential events queued: they are few (one per published object), keep them.

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def flush(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until the broker has every event sent so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self) -> None:
        """No more events will come: the thread ends once it has sent what it holds.

        What the broker has not taken yet is still sent when it returns, for as long as
        this process lives (a worker process runs job after job).
        """
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    def stop(self) -> None:
        """End the background thread now, giving up on what it has not sent (tests, shutdown)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # the sending thread -----------------------------------------------------------------
    def _deliver(self) -> None:
        delay = self._first_retry
        last_sent = float("-inf")
        while not self._stopping.is_set():
            with self._changed:
                while not self._pending and not self._stopping.is_set():
                    if self._closing:
                        return
                    self._changed.wait()
                self._linger(until=last_sent + self._batch_seconds)
                if self._stopping.is_set():
                    return
                batch = self._next_batch()
            try:
                self._send(batch)
            except Exception as error:  # noqa: BLE001 - any broker error: wait and send again
                self.failures += 1
                if delay == self._first_retry:
                    log.warning(
                        "job %s: broker unavailable, %d events buffered, retrying: %s",
                        batch[0].job_id,
                        self.pending,
                        error,
                    )
                self._stopping.wait(delay)
                delay = min(delay * 2, self._max_retry)
                continue
            last_sent = time.monotonic()
            if delay != self._first_retry:
                log.info(
                    "job %s: broker back, sending %d buffered events", batch[0].job_id, self.pending
                )
            delay = self._first_retry
            self._forget(batch)

    def _linger(self, *, until: float) -> None:
        """Wait (lock held) for more events until `until`, unless a batch is full already.

        `until` is a batch interval after the previous send: an event that follows a quiet
        spell goes out at once, and a busy job sends one message per interval at most.
        """
        if not self._batching:
            return
        while (
            len(self._pending) < self._batch_events
            and not self._closing
            and not self._stopping.is_set()
        ):
            left = until - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(left)

    def _next_batch(self) -> list[JobEvent]:
        """The oldest queued events that fit one message (lock held; at least one)."""
        batch: list[JobEvent] = []
        size = 0
        for event in self._pending:
            if len(batch) >= self._batch_events:
                break
            if self._batching:
                size += len(json.dumps(event.payload, default=str)) + _EVENT_OVERHEAD_BYTES
                if batch and size > self._batch_bytes:
                    break
            batch.append(event)
        return batch

    def _send(self, batch: list[JobEvent]) -> None:
        if self._batching:
            self._sink.send_batch(batch)
        else:
            self._sink.send(batch[0])

    def _forget(self, batch: list[JobEvent]) -> None:
        """Take a delivered batch off the queue.

        The batch was the front of the queue when it was taken; meanwhile events were
        only appended or (by `_make_room`) deleted, so what is left of it is still the
        front. Matched by identity: a re-sent event may equal one queued earlier.
        """
        delivered = {id(event) for event in batch}
        with self._changed:
            while self._pending and id(self._pending[0]) in delivered:
                self._pending.popleft()
            self.sent += len(batch)
            self.messages += 1
            self._changed.notify_all()


class EventLog:
    """The last events an attempt emitted, so it can send them again when asked.

    Bounded: the newest `capacity` events, plus every essential event (artifacts,
    checkpoints, the start and the outcome) for the whole attempt, because those are what
    the completion record and a re-send after a gap must be able to reproduce.
    """

    def __init__(self, capacity: int = DEFAULT_LOG_EVENTS) -> None:
        self._capacity = capacity
        self._recent: collections.OrderedDict[int, JobEvent] = collections.OrderedDict()
        self._essential: dict[int, JobEvent] = {}
        self._lock = threading.Lock()

    def record(self, event: JobEvent) -> None:
        with self._lock:
            if event.type in ESSENTIAL_TYPES:
                self._essential[event.seq] = event
                return
            self._recent[event.seq] = event
            while len(self._recent) > self._capacity:
                self._recent.popitem(last=False)

    def get(self, seq: int) -> JobEvent | None:
        with self._lock:
            return self._essential.get(seq) or self._recent.get(seq)

    def find(self, seqs: Iterable[int]) -> tuple[list[JobEvent], list[int]]:
        """The logged events of `seqs` in seq order, and the seqs no longer (or never) logged."""
        found, missing = [], []
        for seq in sorted(set(seqs)):
            event = self.get(seq)
            (found.append(event) if event is not None else missing.append(seq))
        return found, missing

    def published(self) -> list[JobEvent]:
        """Every artifact and checkpoint event of the attempt, in seq order."""
        with self._lock:
            return [
                self._essential[seq]
                for seq in sorted(self._essential)
                if self._essential[seq].type in PUBLISHED_TYPES
            ]
