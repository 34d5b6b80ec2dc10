"""Periodic upkeep of uploads (control worker, celery beat)."""

from __future__ import annotations

import logging

from celery import shared_task

from controlplane.datasets.services import dataset_uploads_reap
from controlplane.datasets.subject_index import INDEX_TASK, version_subject_index
from controlplane.uploads.services import upload_orphans_reap
from controlplane.uploads.tempfiles import upload_temp_files_sweep
from workers.protocol import CONTROL_QUEUE

logger = logging.getLogger(__name__)


@shared_task(
    name="control.reap_abandoned_uploads", queue=CONTROL_QUEUE, ignore_result=True, time_limit=600
)
def reap_abandoned_uploads() -> list[int]:
    """Abandoned dataset uploads, orphan multipart uploads and upload objects, temp files.

    The temp folder is the web process's; the sweep reaches it where the control worker
    shares the data dir (the embedded default, one host). Each web process sweeps its own
    at start as well.
    """
    try:
        upload_temp_files_sweep()
    except OSError:
        logger.exception("sweeping upload temp files failed")
    upload_orphans_reap()
    return dataset_uploads_reap()


@shared_task(name=INDEX_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=3 * 3600)
def dataset_subject_index(version_id: int) -> str:
    """A raw upload's subject index (datasets/subject_index.py): one streaming pass over its
    JSONL objects in the control worker, never in the web process."""
    return version_subject_index(version_id)
