"""The control worker's part of an erasure (gdpr/erasure.py): after the job, and on a beat."""

from __future__ import annotations

from celery import shared_task

from controlplane.gdpr.erasure import ADVANCE_TASK, erasure_advance, erasures_advance_all
from controlplane.gdpr.models import SubjectRequest
from workers.protocol import CONTROL_QUEUE
from workers.storage import StorageError


@shared_task(
    name=ADVANCE_TASK,
    queue=CONTROL_QUEUE,
    ignore_result=True,
    time_limit=3600,
    autoretry_for=(StorageError,),
    retry_backoff=True,
    max_retries=5,
)
def gdpr_erasure_advance(request_id: int) -> str:
    """One request as far as it goes now; a store failure retries (then the beat does)."""
    request = SubjectRequest.objects.filter(pk=request_id).first()
    return erasure_advance(request) if request is not None else "missing"


@shared_task(
    name="control.gdpr_erasures_advance", queue=CONTROL_QUEUE, ignore_result=True, time_limit=3600
)
def gdpr_erasures_advance() -> dict[int, str]:
    """Every erasure in progress: what a lost message or a failed step left waiting."""
    return erasures_advance_all()
