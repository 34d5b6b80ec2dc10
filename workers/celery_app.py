"""The workers' Celery app: consumes JobSpecs on the `cpu` / `gpu` queues.

Start a worker with ``celery -A workers.celery_app worker -Q cpu`` (or ``-Q gpu``).
It needs the broker and the object store, never the database.
"""

from __future__ import annotations

from celery import Celery

from workers.config import celery_settings

app = Celery("workers")
app.conf.update(celery_settings())
# One job at a time per process; a job is long, so don't reserve the next one meanwhile.
app.conf.worker_prefetch_multiplier = 1
app.conf.imports = ["workers.tasks"]

# The worker's heartbeat to the platform's registry (queues and devices): workers/registry.py.
from workers import registry  # noqa: E402

registry.connect()
