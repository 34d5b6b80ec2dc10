"""Control-queue housekeeping of the API layer."""

from __future__ import annotations

from celery import shared_task

from controlplane.api.idempotency import idempotency_records_purge
from workers.protocol import CONTROL_QUEUE


@shared_task(
    name="control.purge_idempotency_keys", queue=CONTROL_QUEUE, ignore_result=True, time_limit=300
)
def purge_idempotency_keys() -> int:
    return idempotency_records_purge()
