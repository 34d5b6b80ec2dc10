"""Control-queue tasks: the platform side of the job protocol."""

from __future__ import annotations

from celery import shared_task

from controlplane.jobs.services import job_apply_event, jobs_reap_expired
from controlplane.jobs.services.outbox import dispatch_outbox_send_due
from workers.protocol import APPLY_EVENT_TASK, CONTROL_QUEUE, JobEvent, ProtocolError


# acks_late + reject_on_worker_lost: if this worker dies mid-apply the event comes back;
# applying it twice is harmless (JobEventRecord's unique key).
@shared_task(
    name=APPLY_EVENT_TASK,
    queue=CONTROL_QUEUE,
    acks_late=True,
    task_reject_on_worker_lost=True,
    ignore_result=True,
    time_limit=60,
)
def apply_event(event: dict) -> bool:
    try:
        parsed = JobEvent.from_dict(event)
    except ProtocolError:
        return False
    return job_apply_event(parsed)


@shared_task(
    name="control.reap_expired_jobs", queue=CONTROL_QUEUE, ignore_result=True, time_limit=120
)
def reap_expired_jobs() -> list[int]:
    return jobs_reap_expired()


# Beat runs this every DISPATCH_OUTBOX_INTERVAL_SECONDS; overlapping runs (two control
# workers, a slow pass) are safe because every row is taken by a conditional claim.
@shared_task(
    name="control.send_dispatch_outbox", queue=CONTROL_QUEUE, ignore_result=True, time_limit=120
)
def send_dispatch_outbox() -> dict[str, int]:
    return dispatch_outbox_send_due()
