"""Periodic upkeep of dataset uploads (control worker, celery beat)."""

from __future__ import annotations

from celery import shared_task

from controlplane.datasets.services import dataset_uploads_reap
from workers.protocol import CONTROL_QUEUE


@shared_task(
    name="control.reap_abandoned_uploads", queue=CONTROL_QUEUE, ignore_result=True, time_limit=600
)
def reap_abandoned_uploads() -> list[int]:
    return dataset_uploads_reap()
