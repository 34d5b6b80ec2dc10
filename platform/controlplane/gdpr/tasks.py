"""The control worker's part of an erasure (gdpr/erasure.py) and of an access request
(gdpr/access.py): after the job, and on a beat; the access exports' expiry."""

from __future__ import annotations

from celery import shared_task

from controlplane.gdpr.access import access_advance, accesses_advance_all, exports_expire
from controlplane.gdpr.erasure import ADVANCE_TASK, erasure_advance, erasures_advance_all
from controlplane.gdpr.models import RequestKind, SubjectRequest
from controlplane.gdpr.organisation import parent_advance, parents_advance_all
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
    if request is None:
        return "missing"
    if request.is_parent:
        return parent_advance(request)
    if request.kind == RequestKind.ACCESS:
        return access_advance(request)
    return erasure_advance(request)


@shared_task(
    name="control.gdpr_erasures_advance", queue=CONTROL_QUEUE, ignore_result=True, time_limit=3600
)
def gdpr_erasures_advance() -> dict[int, str]:
    """Every erasure in progress: what a lost message or a failed step left waiting; every
    access request whose export is not built yet; organisation requests (fan-out, then
    following their children)."""
    return {**erasures_advance_all(), **accesses_advance_all(), **parents_advance_all()}


@shared_task(name="control.gdpr_exports_expire", queue=CONTROL_QUEUE, ignore_result=True)
def gdpr_exports_expire() -> list[int]:
    """Access exports not downloaded within GDPR_EXPORT_TTL_HOURS: deleted, audited."""
    return exports_expire()
