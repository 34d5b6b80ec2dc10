"""Whether a live worker can run a job: the dispatcher's one question about capacity.

Workers advertise their devices in a heartbeat (workers/registry.py -> `Worker` rows,
`worker_heartbeat_apply`). A job that needs more than one process (resources.devices x
resources.nodes > 1) is sent only when enough live workers of its queue each have
`devices` of them (GPUs on the gpu queue, CPUs on the cpu queue), one per node; else it
stays queued, held for "capacity" with the reason in words ("needs 8 GPUs; largest worker
has 4"), never sent to run on fewer. A one-process job is sent as before: any worker of
its queue runs it, and the broker keeps it until one comes (the overview's "no worker").

The outbox calls `capacity_hold_reason` before each send (services/outbox.py): a held
row is looked at again every CAPACITY_RECHECK_SECONDS by the outbox's beat pass, and at
once when a worker's heartbeat brings new capacity (`worker_heartbeat_apply`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from controlplane.jobs.models import DispatchState, Job, JobDispatch, JobState, Worker
from workers.protocol import WorkerHeartbeat

log = logging.getLogger(__name__)

HELD_FOR_CAPACITY = "capacity"
# How often the outbox's beat pass asks again for a job held for capacity (a heartbeat
# that brings capacity asks at once; this covers a worker whose message was lost).
CAPACITY_RECHECK_SECONDS = 30
# A worker not heard from for this long leaves the registry (autoscaled nodes come and go).
FORGET_AFTER = timedelta(days=7)


@dataclass(frozen=True)
class Needs:
    devices: int  # processes per node
    nodes: int

    @property
    def processes(self) -> int:
        return self.devices * self.nodes


def job_needs(params: Any) -> Needs:
    """What a job's stored resources ask for (validated at creation; defaults 1 x 1)."""
    resources = params.get("resources") if isinstance(params, dict) else None
    resources = resources if isinstance(resources, dict) else {}

    def count(name: str) -> int:
        value = resources.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1

    return Needs(devices=count("devices"), nodes=count("nodes"))


def is_live(worker: Worker, now: datetime) -> bool:
    """Heard from within WORKER_STALE_HEARTBEATS of its own interval, and not gone."""
    silence = timedelta(seconds=settings.WORKER_STALE_HEARTBEATS * worker.heartbeat_seconds)
    return worker.left_at is None and worker.last_seen_at >= now - silence


def live_workers(queue: str, *, now: datetime | None = None) -> list[Worker]:
    now = now or timezone.now()
    candidates = Worker.objects.filter(left_at__isnull=True, queues__contains=[queue])
    return [worker for worker in candidates if is_live(worker, now)]


def _unit(queue: str, count: int) -> str:
    if queue == "gpu":
        return f"{count} GPU{'s' if count != 1 else ''}"
    return f"{count} CPU{'s' if count != 1 else ''}"


def capacity_hold_reason(job: Job, *, now: datetime | None = None) -> str:
    """Why no live worker can run the job now ("" when one can, or when it needs one
    process: then any worker of its queue can)."""
    needs = job_needs(job.params)
    if needs.processes == 1:
        return ""
    workers = live_workers(job.queue, now=now)
    capable = [w for w in workers if w.devices_for(job.queue) >= needs.devices]
    if len(capable) >= needs.nodes:
        return ""
    wanted = f"needs {_unit(job.queue, needs.devices)}"
    if needs.nodes > 1:
        wanted += f" on each of {needs.nodes} nodes"
    if not workers:
        return f"{wanted}; no live worker on the {job.queue} queue"
    largest = max(w.devices_for(job.queue) for w in workers)
    if capable:
        return (
            f"{wanted}; {len(capable)} live worker{'s' if len(capable) != 1 else ''} "
            f"of the {job.queue} queue {'have' if len(capable) != 1 else 'has'} that many"
        )
    return f"{wanted}; largest worker has {largest}"


def hold_for_capacity(job: Job, reason: str) -> None:
    """Mark the job's current attempt held (the outbox keeps its row pending)."""
    Job.objects.filter(
        pk=job.pk, attempt=job.attempt, state=JobState.QUEUED, held_for__in=["", HELD_FOR_CAPACITY]
    ).update(held_for=HELD_FOR_CAPACITY, held_reason=reason[:300])


def held_dispatches_due_now(queues: list[str], *, now: datetime | None = None) -> list[int]:
    """Make the pending outbox rows of jobs held for capacity on these queues due now
    (a worker brought capacity). Returns the rows."""
    now = now or timezone.now()
    rows = list(
        JobDispatch.objects.filter(
            state=DispatchState.PENDING,
            job__state=JobState.QUEUED,
            job__held_for=HELD_FOR_CAPACITY,
            job__queue__in=queues,
        ).values_list("pk", flat=True)
    )
    JobDispatch.objects.filter(pk__in=rows, next_attempt_at__gt=now).update(next_attempt_at=now)
    return rows


def worker_heartbeat_apply(beat: WorkerHeartbeat, *, now: datetime | None = None) -> bool:
    """Record a worker's heartbeat. Returns True when it brings capacity the registry did
    not have (a new worker, one back from silence, more devices), after which the jobs
    held for capacity on its queues are looked at again at once (by the caller)."""
    now = now or timezone.now()
    seen = datetime.fromtimestamp(min(beat.time, now.timestamp()), tz=now.tzinfo)
    previous = Worker.objects.filter(name=beat.name).first()
    was_live = previous is not None and is_live(previous, now)
    values = {
        "queues": list(beat.queues),
        "gpus": beat.devices.gpus,
        "gpu_type": beat.devices.gpu_type,
        "gpu_memory_bytes": beat.devices.gpu_memory_bytes,
        "cpus": beat.devices.cpus,
        "heartbeat_seconds": beat.heartbeat_seconds,
        "started_at": datetime.fromtimestamp(beat.started_at, tz=now.tzinfo),
        "last_seen_at": seen,
        "left_at": now if beat.leaving else None,
    }
    Worker.objects.update_or_create(name=beat.name, defaults=values)
    if beat.leaving:
        log.info("worker %s left", beat.name)
        return False
    grew = (
        not was_live
        or previous.gpus < beat.devices.gpus
        or previous.cpus < beat.devices.cpus
        or not set(beat.queues) <= set(previous.queues)
    )
    if grew:
        # Now and then (a worker arrives): forget workers not heard from for a week.
        Worker.objects.filter(last_seen_at__lt=now - FORGET_AFTER).delete()
        log.info(
            "worker %s on %s: %d GPU(s), %d CPU(s)",
            beat.name,
            ",".join(beat.queues),
            beat.devices.gpus,
            beat.devices.cpus,
        )
    return grew
