"""Where a running job's events go: the `control` queue, one Celery message per event."""

from __future__ import annotations

from typing import Protocol

from workers.protocol import APPLY_EVENT_TASK, CONTROL_QUEUE, JobEvent


class EventSink(Protocol):
    def send(self, event: JobEvent) -> None: ...


class ControlQueueSink:
    def __init__(self, app) -> None:
        self.app = app

    def send(self, event: JobEvent) -> None:
        self.app.send_task(APPLY_EVENT_TASK, args=[event.to_dict()], queue=CONTROL_QUEUE)


class ListSink:
    """Collects events in memory: for running a job handler outside Celery (tests, CLI)."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def send(self, event: JobEvent) -> None:
        self.events.append(event)
