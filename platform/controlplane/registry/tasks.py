"""Control-worker tasks of the registry: finish a registration, sweep those left behind."""

from __future__ import annotations

from celery import shared_task

from controlplane.registry.services import FINISH_TASK, finish_registration, registry_sweep
from workers.protocol import CONTROL_QUEUE


@shared_task(name=FINISH_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=3600)
def registry_finish_registration(version_id: int) -> str:
    """Copy, verify and inspect one version's files (sent when its registration commits)."""
    return finish_registration(version_id).state


@shared_task(
    name="control.registry_sweep", queue=CONTROL_QUEUE, ignore_result=True, time_limit=3600
)
def registry_sweep_task() -> list[int]:
    """Versions registering for more than 30 s: their task was lost or their store was down."""
    return registry_sweep()
