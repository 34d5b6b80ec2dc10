"""Celery tasks of the workers: one generic entry point that runs any job kind."""

from __future__ import annotations

from workers.celery_app import app
from workers.config import worker_runtime_config
from workers.events import BufferedSink, ControlQueueSink
from workers.jobs import HANDLERS
from workers.protocol import RUN_JOB_TASK, JobSpec
from workers.runtime import run_attempt
from workers.storage import get_object_store
from workers.storage.retrying import RetryingObjectStore


# Acked on receipt (not acks_late): a job may run for hours, longer than any broker
# visibility timeout, so a lost worker is detected by its lease and the platform's reaper
# re-dispatches; redelivery by the broker would only run the job twice.
@app.task(name=RUN_JOB_TASK, acks_late=False, ignore_result=True)
def run_job(spec: dict) -> str:
    parsed = JobSpec.from_dict(spec)
    config = worker_runtime_config()
    # Events leave through a buffer so a broker outage never stops the training: they are
    # sent in order by a background thread once the broker is back.
    # They travel in batches: one message per WORKER_EVENT_BATCH_MS while they keep coming.
    sink = BufferedSink(
        ControlQueueSink(app),
        capacity=config.event_buffer_events,
        batch_seconds=config.event_batch_seconds,
    )
    # The store retries transient errors (a restarting S3 server) for up to
    # WORKER_STORAGE_PATIENCE_SECONDS before the attempt fails as retryable.
    store = RetryingObjectStore(
        get_object_store(), patience_seconds=config.storage_patience_seconds
    )
    try:
        return run_attempt(parsed, sink, store, HANDLERS, flush_seconds=config.event_flush_seconds)
    finally:
        sink.close()
