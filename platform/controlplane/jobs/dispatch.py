"""Sending JobSpecs to the worker queues (the only place the platform talks to workers)."""

from __future__ import annotations

from django.conf import settings

from controlplane.celery_app import app
from controlplane.jobs.models import Job
from workers.protocol import RUN_JOB_TASK, ArtifactRef, JobKind, JobSpec


def job_spec(job: Job) -> JobSpec:
    return JobSpec(
        job_id=job.pk,
        kind=JobKind(job.kind),
        project_id=job.project_id,
        attempt=job.attempt,
        inputs=tuple(ArtifactRef.from_dict(item) for item in job.inputs),
        params=job.params,
        # Per attempt: a re-dispatched job never collides with what a killed attempt wrote.
        output_prefix=f"{job.output_prefix}attempt-{job.attempt}/",
        heartbeat_seconds=float(settings.JOB_HEARTBEAT_SECONDS),
        resume_checkpoint=job.resume_checkpoint or None,
        tracking_run_id=job.tracking_run_id or None,
        tracking=tracking_block(job),
    )


def tracking_block(job: Job) -> dict:
    """What the worker's MLflow run is called and tagged with: links back to the platform."""
    project = job.project
    tags = {
        "controlplane.project_id": project.pk,
        "controlplane.project": project.slug,
        "controlplane.created_by": job.created_by_id,
    }
    for key in ("dataset_version_id", "base_job_id", "reward_job_id"):
        if job.params.get(key) is not None:
            tags[f"controlplane.{key}"] = job.params[key]
    return {
        "experiment": f"{project.slug}/{job.experiment or job.kind}",
        "run_name": f"{job.kind}-{job.pk}",
        "tags": tags,
        "params": job.params,
    }


def send_job(job: Job) -> None:
    app.send_task(RUN_JOB_TASK, args=[job_spec(job).to_dict()], queue=job.queue)


def training_queue() -> str:
    """The gpu queue when a worker consumes it, else cpu (TRAINING_QUEUE overrides).

    Asking the workers costs a broadcast round trip, so the answer is cached a minute.
    """
    from django.core.cache import cache

    if settings.TRAINING_QUEUE in ("cpu", "gpu"):
        return settings.TRAINING_QUEUE
    cached = cache.get("controlplane:gpu-workers-up")
    if cached is None:
        try:
            replies = app.control.inspect(timeout=0.5).active_queues() or {}
        except Exception:  # noqa: BLE001 - a broker without broadcast: assume no gpu worker
            replies = {}
        cached = any(q.get("name") == "gpu" for queues in replies.values() for q in queues)
        cache.set("controlplane:gpu-workers-up", cached, 60)
    return "gpu" if cached else "cpu"
