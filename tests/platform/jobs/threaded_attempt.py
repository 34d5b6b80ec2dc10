"""One job attempt run by the worker's own code in a thread of the test, its events kept.

    attempt = ThreadedAttempt(job_spec(job))
    attempt.wait_for(lambda event: event.type == "metric", 60)
    assert attempt.finish(60) == "cancelled"
    attempt.apply()                      # as the control worker would

What a worker process does, minus Celery: for tests that act while the job runs (cancel
it, kill one of its training processes) or run several node tasks of a gang at once.
"""

from __future__ import annotations

import threading
import time


class ThreadedAttempt:
    def __init__(self, spec) -> None:
        from controlplane.storage import object_store
        from workers.events import ListSink
        from workers.jobs import HANDLERS
        from workers.runtime import run_attempt

        self.sink = ListSink()
        self.outcome: str | None = None
        store = object_store()

        def run() -> None:
            self.outcome = run_attempt(spec, self.sink, store, HANDLERS, flush_seconds=1)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def events(self) -> list:
        return list(self.sink.events)

    def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(predicate(event) for event in self.events):
            assert self.thread.is_alive(), [event.type for event in self.events]
            assert time.monotonic() < deadline, [event.type for event in self.events]
            time.sleep(0.1)

    def finish(self, timeout: float) -> str | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the attempt did not end"
        return self.outcome

    def apply(self) -> None:
        from controlplane.jobs.services import job_apply_event

        for event in self.events:
            job_apply_event(event)
