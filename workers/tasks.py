"""Celery tasks of the workers: one generic entry point that runs any job kind."""

from __future__ import annotations

from workers.celery_app import app
from workers.events import ControlQueueSink
from workers.jobs import HANDLERS
from workers.protocol import RUN_JOB_TASK, JobSpec
from workers.runtime import run_attempt
from workers.storage import get_object_store


# Acked on receipt (not acks_late): a job may run for hours, longer than any broker
# visibility timeout, so a lost worker is detected by its lease and the platform's reaper
# re-dispatches; redelivery by the broker would only run the job twice.
@app.task(name=RUN_JOB_TASK, acks_late=False, ignore_result=True)
def run_job(spec: dict) -> str:
    parsed = JobSpec.from_dict(spec)
    return run_attempt(parsed, ControlQueueSink(app), get_object_store(), HANDLERS)
