"""Periodic upkeep of uploads (control worker, celery beat)."""

from __future__ import annotations

import logging

from celery import shared_task

from controlplane.datasets.services import dataset_uploads_reap
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
