"""Where a running job's events go: the `control` queue, one Celery message per event.

A job must outlive a broker outage, so the worker never sends from the training loop:

    sink = BufferedSink(ControlQueueSink(app))   # a background thread does the sending
    sink.send(event)                              # never blocks on the broker, never raises
    sink.flush(timeout=120)                       # at the end of an attempt: bounded wait

`BufferedSink` keeps the events not yet accepted by the broker in memory, in seq order,
and re-sends them in that order with exponential backoff until the broker is back. Each
event keeps the seq it was numbered with, which is what makes a re-send harmless: the
platform applies (job, attempt, seq) once. The buffer is bounded; when it is full the
oldest event the platform can ask for again (metrics, progress, logs, heartbeats: the
worker's `EventLog` still holds them, see `resend_request_prefix`) is dropped from the
send queue, never an artifact, checkpoint or outcome.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from typing import Protocol

from workers.protocol import APPLY_EVENT_TASK, CONTROL_QUEUE, EventType, JobEvent

log = logging.getLogger(__name__)

DEFAULT_BUFFER_EVENTS = 10_000
DEFAULT_LOG_EVENTS = 50_000
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


class EventSink(Protocol):
    def send(self, event: JobEvent) -> None: ...

    def flush(self, timeout: float) -> bool:
        """Wait until every event sent so far is delivered; False if `timeout` ran out."""
        ...


class ControlQueueSink:
    def __init__(self, app) -> None:
        self.app = app

    def send(self, event: JobEvent) -> None:
        self.app.send_task(APPLY_EVENT_TASK, args=[event.to_dict()], queue=CONTROL_QUEUE)

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
    """Sends events to another sink from a background thread, in order, through outages."""

    def __init__(
        self,
        sink: EventSink,
        *,
        capacity: int = DEFAULT_BUFFER_EVENTS,
        first_retry_seconds: float = 0.5,
        max_retry_seconds: float = 10.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("the event buffer needs room for at least one event")
        self._sink = sink
        self._capacity = capacity
        self._first_retry = first_retry_seconds
        self._max_retry = max_retry_seconds
        self._pending: collections.deque[JobEvent] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.sent = 0
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
        while not self._stopping.is_set():
            with self._changed:
                while not self._pending and not self._stopping.is_set():
                    if self._closing:
                        return
                    self._changed.wait()
                if self._stopping.is_set():
                    return
                event = self._pending[0]
            try:
                self._sink.send(event)
            except Exception as error:  # noqa: BLE001 - any broker error: wait and send again
                self.failures += 1
                if delay == self._first_retry:
                    log.warning(
                        "job %s: broker unavailable, %d events buffered, retrying: %s",
                        event.job_id,
                        self.pending,
                        error,
                    )
                self._stopping.wait(delay)
                delay = min(delay * 2, self._max_retry)
                continue
            if delay != self._first_retry:
                log.info(
                    "job %s: broker back, sending %d buffered events", event.job_id, self.pending
                )
            delay = self._first_retry
            with self._changed:
                # _make_room may have dropped it meanwhile: remove by identity, not position.
                if self._pending and self._pending[0] is event:
                    self._pending.popleft()
                self.sent += 1
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
