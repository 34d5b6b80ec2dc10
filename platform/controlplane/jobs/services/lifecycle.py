"""Job life cycle as the user drives it: create, resume, cancel; dispatch after commit."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.jobs.kinds import validate_job_request
from controlplane.jobs.models import (
    ArtifactKind,
    Job,
    JobArtifact,
    JobState,
)
from controlplane.jobs.posttrain import POSTTRAIN_KINDS
from controlplane.jobs.requests import JobRequest
from controlplane.jobs.services.outbox import dispatch_enqueue, dispatch_send_after_commit
from controlplane.policies.gates import enforce, record_allowed
from controlplane.policies.plans import job_plan
from controlplane.policies.rules import Gate
from controlplane.projects.models import Project
from controlplane.storage import object_store
from workers.protocol import cancel_marker_key

log = logging.getLogger(__name__)


class JobError(Exception):
    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


def dispatch_after_commit(job: Job) -> None:
    """Queue the job's current attempt for its worker: an outbox row in the caller's
    transaction, sent right after commit if the broker takes it, else by the control
    worker's outbox task (services/outbox.py). Never raises for a broker outage."""
    dispatch = dispatch_enqueue(job)
    transaction.on_commit(partial(dispatch_send_after_commit, dispatch.pk), robust=True)


def job_create(
    *, project: Project, kind: str, params: dict[str, Any], actor: User, experiment: str = ""
) -> Job:
    # Validated before the transaction opens: the checks read committed rows only, and the
    # data pipeline's config is checked by the engine in a subprocess (~0.8 s) that must
    # not hold a connection in a transaction meanwhile.
    request = validate_job_request(project=project, kind=kind, params=params)
    _finops().gpu_job_gate(project=project, queue=request.queue, params=request.params)
    # The policy is asked before the transaction too: a refusal's audit event commits
    # although no job is made (PolicyDenied, a 409 with the rule, reason and fix).
    decision = enforce(
        project=project,
        gate=Gate.JOB_CREATE,
        subject=lambda: job_plan(kind=kind, queue=request.queue, params=request.params),
        actor=actor,
    )
    with transaction.atomic():
        job = _job_insert(project, kind, request, actor, experiment)
        record_allowed(decision, project=project, actor=actor, artifact=job)
        return job


def _start_evaluation(job: Job) -> None:
    from controlplane.registry.evaluations import evaluation_start

    evaluation_start(job)


# What creating a job of a kind also creates, in the job's transaction.
_ON_CREATE = {"evaluate": _start_evaluation}


def _job_insert(
    project: Project, kind: str, request: JobRequest, actor: User, experiment: str
) -> Job:
    now = timezone.now()
    job = Job.objects.create(
        project=project,
        kind=kind,
        experiment=experiment,
        queue=request.queue,
        params=request.params,
        inputs=request.inputs,
        created_by=actor,
        dispatched_at=now,
    )
    admitted = _finops().quota_admit(job)  # else held for the project's GPU quota
    if kind in _ON_CREATE:
        _ON_CREATE[kind](job)
    audit_append(
        project=project,
        actor=actor,
        action="job.created",
        artifact=job,
        payload={
            "kind": kind,
            "params": request.params,
            "inputs": request.inputs,
            **({} if admitted else {"held_for": job.held_for}),
        },
    )
    if admitted:
        dispatch_after_commit(job)
    return job


def _finops():
    # Imported when used: finops imports the jobs app (its models and JobError).
    from controlplane.finops import quotas

    return quotas


# Kinds whose work is checkpointed, so a failed run can go on from a checkpoint.
RESUMABLE_KINDS = {"pretrain", "diffusion", "gan", "vae", *POSTTRAIN_KINDS}


def job_resume(*, job: Job, checkpoint: JobArtifact, actor: User) -> Job:
    """Run a failed job again from one of its checkpoints, as its next attempt.

    The policy in force now is asked first (outside the transaction, so that a refusal is
    audited): a resumed run must be allowed as a new one would be, or have a waiver."""
    current = Job.objects.select_related("project").get(pk=job.pk)
    if current.state == JobState.FAILED:
        _finops().gpu_job_gate(project=current.project, queue=current.queue, params=current.params)
    decision = None
    if current.kind in RESUMABLE_KINDS and current.state == JobState.FAILED:
        decision = enforce(
            project=current.project,
            gate=Gate.JOB_CREATE,
            subject=lambda: job_plan(
                kind=current.kind, queue=current.queue, params=current.params, job=current
            ),
            actor=actor,
        )
    with transaction.atomic():
        resumed = _job_resume(job=job, checkpoint=checkpoint, actor=actor)
        if decision is not None:
            record_allowed(decision, project=resumed.project, actor=actor, artifact=resumed)
        return resumed


def _job_resume(*, job: Job, checkpoint: JobArtifact, actor: User) -> Job:
    job = Job.objects.select_for_update().select_related("project").get(pk=job.pk)
    if job.kind not in RESUMABLE_KINDS:
        raise JobError(f"{job.kind} jobs keep no checkpoints; start a new job instead", status=409)
    if job.state == JobState.CANCELLED:
        raise JobError(
            f"job {job.pk} was cancelled on purpose; start a new job (its checkpoints stay "
            "listed on its page) rather than resuming it",
            status=409,
        )
    if job.state != JobState.FAILED:
        raise JobError(f"job {job.pk} is {job.state}; only a failed job can be resumed", status=409)
    if checkpoint.job_id != job.pk or checkpoint.kind != ArtifactKind.CHECKPOINT:
        raise JobError(f"artifact {checkpoint.pk} is not a checkpoint of job {job.pk}", status=400)
    job.state = JobState.QUEUED
    job.attempt += 1
    job.resume_checkpoint = checkpoint.object_key
    job.error = ""
    job.finished_at = None
    job.lease_expires_at = None
    job.dispatched_at = timezone.now()
    job.save(
        update_fields=[
            "state",
            "attempt",
            "resume_checkpoint",
            "error",
            "finished_at",
            "lease_expires_at",
            "dispatched_at",
        ]
    )
    audit_append(
        project=job.project,
        actor=actor,
        action="job.resumed",
        artifact=job,
        payload={
            "attempt": job.attempt,
            "checkpoint": checkpoint.object_key,
            "step": checkpoint.step,
        },
    )
    if _finops().quota_admit(job):
        dispatch_after_commit(job)
    return job


@transaction.atomic
def job_cancel(*, job: Job, actor: User, reason: dict[str, Any] | None = None) -> Job:
    """Cooperative cancel: a queued job stops at once, a running one at its next check.
    `reason` (why, when not the actor's choice: an erasure request) joins the audit payload."""
    job = Job.objects.select_for_update().get(pk=job.pk)  # job row first, then the audit chain
    if job.is_terminal:
        raise JobError(f"job {job.pk} already {job.state}; nothing to cancel", status=409)
    now = timezone.now()
    if job.cancel_requested_at is None:
        job.cancel_requested_at = now
    # The marker tells the worker (which holds no database credentials) to stop. Written
    # after commit, so a cancel that rolls back leaves no marker behind; if the store
    # fails then, the reaper writes it again (robust: the committed cancel still answers).
    marker_text = f"cancel requested by user {actor.pk}"
    transaction.on_commit(lambda: put_marker(cancel_marker_key(job.pk), marker_text), robust=True)
    if job.state == JobState.QUEUED:
        job.state = JobState.CANCELLED
        job.finished_at = now
        _finops().on_job_terminal(job)
        audit_append(
            project=job.project,
            actor=actor,
            action="job.cancelled",
            artifact=job,
            payload={"while": "queued", **(reason or {})},
        )
    else:
        audit_append(
            project=job.project,
            actor=actor,
            action="job.cancel_requested",
            artifact=job,
            payload={**(reason or {})},
        )
    job.save(update_fields=["state", "finished_at", "cancel_requested_at"])
    return job


def put_marker(key: str, text: str) -> None:
    # Keys are never overwritten: a second cancel (or reap) finds the marker already there.
    store = object_store()
    if not store.exists(key):
        store.put_bytes(key, (text + "\n").encode())
