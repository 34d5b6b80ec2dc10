"""Control-queue tasks of the policies: the violation scan (asked for, and nightly)."""

from __future__ import annotations

from celery import shared_task

from controlplane.policies.scan import (
    HARD_TIME_LIMIT_SECONDS,
    NIGHTLY_TASK,
    SCAN_TASK,
    SOFT_TIME_LIMIT_SECONDS,
    scan_nightly,
    scan_run,
)
from workers.protocol import CONTROL_QUEUE

LIMITS = {"soft_time_limit": SOFT_TIME_LIMIT_SECONDS, "time_limit": HARD_TIME_LIMIT_SECONDS}


# A scan claims its row (queued -> running) before it starts, so a message delivered twice
# runs it once; a crash or the soft time limit marks it failed (scan_run catches both).
@shared_task(name=SCAN_TASK, queue=CONTROL_QUEUE, ignore_result=True, **LIMITS)
def policy_scan(scan_id: int) -> str | None:
    scan = scan_run(scan_id)
    return scan.state if scan is not None else None


@shared_task(name=NIGHTLY_TASK, queue=CONTROL_QUEUE, ignore_result=True, **LIMITS)
def policy_scan_nightly() -> str | None:
    scan = scan_nightly()
    return scan.state if scan is not None else None
