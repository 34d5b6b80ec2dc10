"""Control-worker tasks of serving's archive: index what replicas stored, purge the old."""

from __future__ import annotations

from celery import shared_task

from controlplane.serving.archive import PURGE_TASK, ingest_index, purge_expired
from workers.protocol import CONTROL_QUEUE
from workers.serve.protocol import ARCHIVE_INDEX_TASK


@shared_task(name=ARCHIVE_INDEX_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=120)
def serve_archive_index(payload: dict) -> int:
    """One archive object's index rows (sent by a replica after it stored the object)."""
    archived = ingest_index(payload)
    return archived.records if archived is not None else 0


@shared_task(name=PURGE_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=3600)
def serve_purge_archive() -> dict[int, int]:
    """Archive objects and rows past their project's retention (beat: hourly)."""
    return {project_id: c.records for project_id, c in purge_expired().items()}
