"""Multi-node attempts: M node tasks of one attempt, dispatched and watched as a gang.

A training job whose params hold ``resources.nodes`` M > 1 is sent as M JobSpecs of the
same attempt (``gang = {"nodes": M, "member": i, "timeout_seconds": T}``) to its queue;
each node's worker (workers/gang.py) then tells the platform, on the control queue:

- join (GANG_JOIN_TASK): the first node to join hosts torchrun's c10d rendezvous; its
  endpoint is published in the object store (``rendezvous_key``), where every node of
  the gang reads it (workers hold no database credentials);
- beat (GANG_BEAT_TASK): each node's own lease; the job's lease is kept by the node that
  speaks for the attempt (its heartbeats, as for any job);
- leave (GANG_LEAVE_TASK): how its part ended; an error fails the attempt at once.

Invariants: rows and decisions of an attempt other than the job's current one are
ignored (a stale node of an older attempt changes nothing); the job row is locked first
(the package's lock order). The attempt is lost, every node stopped (the superseded
marker) and the job retried from its last checkpoint, when: the gang is not complete
GANG_TIMEOUT_SECONDS after dispatch, a node's beats stop for JOB_LEASE_SECONDS, or a
node leaves with a retryable error (its rendezvous port in use). After JOB_MAX_ATTEMPTS
the job fails with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane.jobs.models import GangMember, Job, JobState
from workers.protocol import JobSpec, rendezvous_key, superseded_marker_key

log = logging.getLogger(__name__)


def gang_nodes(job: Job) -> int:
    """How many nodes the job's attempts run on (1: not a gang)."""
    resources = job.params.get("resources") if isinstance(job.params, dict) else None
    nodes = resources.get("nodes", 1) if isinstance(resources, dict) else 1
    return nodes if isinstance(nodes, int) and nodes > 1 else 1


def gang_specs(job: Job, spec: JobSpec) -> list[JobSpec]:
    """The M node tasks of the job's current attempt.

    MLflow tracking is left to no node: which one speaks for the attempt is known only
    once torchrun placed rank 0, and each opening a run would leave M runs per attempt.
    """
    nodes = gang_nodes(job)
    timeout = float(settings.GANG_TIMEOUT_SECONDS)
    return [
        dataclasses.replace(
            spec,
            tracking=None,
            gang={"nodes": nodes, "member": member, "timeout_seconds": timeout},
        )
        for member in range(nodes)
    ]


def _current(job_id: int, attempt: int) -> Job | None:
    """The job row, locked, if ``attempt`` is its current, unfinished one."""
    job = Job.objects.select_for_update().filter(pk=job_id).first()
    if job is None or job.attempt != attempt or job.is_terminal:
        return None
    return job


@transaction.atomic
def gang_join(*, job_id: int, attempt: int, member: int, endpoint: str) -> bool:
    """A node is ready; the first of its attempt hosts the rendezvous. True if it hosts."""
    job = _current(job_id, attempt)
    if job is None:
        return False
    now = timezone.now()
    has_host = GangMember.objects.filter(job=job, attempt=attempt, is_host=True).exists()
    row, _created = GangMember.objects.update_or_create(
        job=job,
        attempt=attempt,
        member=member,
        defaults={"endpoint": endpoint[:300], "joined_at": now, "last_beat_at": now},
    )
    if has_host:
        return False
    row.is_host = True
    row.save(update_fields=["is_host"])
    record = {
        "endpoint": row.endpoint,
        "host_member": member,
        "nodes": gang_nodes(job),
        "run_id": f"job-{job_id}-attempt-{attempt}",
    }
    transaction.on_commit(lambda: _publish(rendezvous_key(job_id, attempt), record))
    log.info(
        "job %s attempt %s: node %s hosts the rendezvous at %s", job_id, attempt, member, endpoint
    )
    return True


def _publish(key: str, record: dict) -> None:
    from controlplane.storage import object_store

    object_store().put_bytes(key, json.dumps(record).encode(), content_type="application/json")


def gang_beat(*, job_id: int, attempt: int, member: int) -> None:
    GangMember.objects.filter(
        job_id=job_id, attempt=attempt, member=member, left_at__isnull=True
    ).update(last_beat_at=timezone.now())


@transaction.atomic
def gang_leave(
    *, job_id: int, attempt: int, member: int, error: str = "", retryable: bool = False
) -> None:
    """A node's part ended; with an error, the attempt fails (retried if ``retryable``)."""
    job = _current(job_id, attempt)
    now = timezone.now()
    GangMember.objects.filter(job_id=job_id, attempt=attempt, member=member).update(
        left_at=now, error=error[:5000]
    )
    if job is None or not error:
        return
    attempt_lost(job, now=now, reason=f"node {member}: {error}", retry=retryable)


def attempt_lost(job: Job, *, now: datetime, reason: str, retry: bool = True) -> None:
    """Stop every node of the job's current attempt; retry it, or fail the job.

    The caller holds the job row lock and has checked the attempt is current.
    """
    from controlplane.jobs.services.attempts import fail_for_good, requeue_next_attempt
    from controlplane.jobs.services.lifecycle import put_marker

    # Every node of the gang reads it and stops; a late message of it does nothing.
    put_marker(superseded_marker_key(job.pk, job.attempt), reason)
    if retry and job.attempt < settings.JOB_MAX_ATTEMPTS and job.cancel_requested_at is None:
        requeue_next_attempt(job, now=now, action="job.retried", reason=reason[:1000])
        return
    fail_for_good(job, now=now, error=reason, reason=reason)


def gangs_reap(*, now: datetime | None = None) -> list[int]:
    """The reaper's pass over gangs: incomplete past their timeout, or a node gone quiet.
    Returns the jobs whose attempt was given up."""
    now = now or timezone.now()
    lost = []
    active = Job.objects.filter(
        state__in=[JobState.QUEUED, JobState.RUNNING], held_for="", dispatched_at__isnull=False
    ).filter(params__resources__nodes__gt=1)
    for job_id in active.values_list("pk", flat=True)[:500]:
        try:
            if _reap_gang(job_id, now):
                lost.append(job_id)
        except Exception:  # noqa: BLE001 - one bad job must not stop the pass for the others
            log.exception("reaping the gang of job %s failed; tried again next pass", job_id)
    return lost


@transaction.atomic
def _reap_gang(job_id: int, now: datetime) -> bool:
    job = Job.objects.select_for_update(skip_locked=True).filter(pk=job_id).first()
    if job is None or job.is_terminal or job.held_for:
        return False
    reason = _gang_problem(job, now)
    if reason is None:
        return False
    log.warning("job %s attempt %s: %s", job.pk, job.attempt, reason)
    attempt_lost(job, now=now, reason=reason)
    return True


def _gang_problem(job: Job, now: datetime) -> str | None:
    """Why the current attempt's gang is lost, or None while it is fine."""
    nodes = gang_nodes(job)
    members = list(GangMember.objects.filter(job=job, attempt=job.attempt))
    joined = len(members)
    timeout = timedelta(seconds=settings.GANG_TIMEOUT_SECONDS)
    if joined < nodes and job.dispatched_at and now - job.dispatched_at > timeout:
        return (
            f"the gang was not complete after {settings.GANG_TIMEOUT_SECONDS} s: {joined} of "
            f"{nodes} nodes joined"
        )
    lease = timedelta(seconds=settings.JOB_LEASE_SECONDS)
    for member in members:
        if member.left_at is None and now - member.last_beat_at > lease:
            return f"node {member.member} lost (no beat for {settings.JOB_LEASE_SECONDS} s)"
    return None
