"""Sending JobSpecs to the worker queues (the only place the platform talks to workers)."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings

from controlplane.celery_app import app
from controlplane.jobs.models import Job
from controlplane.subject_keys import project_subject_key
from workers.protocol import RUN_JOB_TASK, ArtifactRef, JobKind, JobSpec

log = logging.getLogger(__name__)

# One quick retry, then give up: the outbox retries with backoff, so a caller (a web
# request) never waits through Celery's default publish retries on a dead broker.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0.2,
    "interval_step": 0,
    "interval_max": 0.2,
}
# After a failed send, this process leaves sends to the control worker's outbox for a while.
BROKER_BACKOFF_SECONDS = 5.0
GPU_WORKERS_CACHE_KEY = "controlplane:gpu-workers-up"


class BrokerHealth:
    """What this process last learnt about the broker from its own sends (for /healthz)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures = 0
        self.last_failure_at: float | None = None  # time.monotonic()
        self.last_error = ""

    def record_failure(self, error: Exception) -> None:
        with self._lock:
            self.failures += 1
            self.last_failure_at = time.monotonic()
            self.last_error = f"{type(error).__name__}: {error}"

    def record_success(self) -> None:
        with self._lock:
            self.last_failure_at = None
            self.last_error = ""

    def failed_within(self, seconds: float) -> bool:
        failed_at = self.last_failure_at
        return failed_at is not None and time.monotonic() - failed_at < seconds

    def status(self) -> dict:
        failed_at = self.last_failure_at
        return {
            "ok": failed_at is None,
            "send_failures": self.failures,
            "last_error": self.last_error,
            "seconds_since_failure": None
            if failed_at is None
            else round(time.monotonic() - failed_at, 1),
        }


broker_health = BrokerHealth()


def broker_recently_failed() -> bool:
    return broker_health.failed_within(BROKER_BACKOFF_SECONDS)


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
        subject_key=_subject_key(job),
        subject_secrets=_subject_secrets(job),
    )


def _subject_key(job: Job) -> str:
    """The project's data-subject key, for a pipeline job whose dataset names a subject
    field (its subject index holds keyed hashes). Derived here, at send time, so the key
    is in the message only: never in the job row, its audit events or MLflow."""
    if job.kind == JobKind.DATA_PIPELINE and job.params.get("subject_field"):
        return project_subject_key(job.project)
    return ""


def _subject_secrets(job: Job) -> dict | None:
    """An erasure job's subject (identifiers, the project's keys, the keyed hashes), read
    from its request at send time: in the message only (see JobSpec.subject_secrets)."""
    if job.kind != JobKind.ERASURE:
        return None
    from controlplane.gdpr.erasure import erasure_secrets

    return erasure_secrets(job)


def tracking_block(job: Job) -> dict:
    """What the worker's MLflow run is called and tagged with: links back to the platform."""
    project = job.project
    tags = {
        "controlplane.project_id": project.pk,
        "controlplane.project": project.slug,
        "controlplane.created_by": job.created_by_id,
    }
    for key in ("dataset_version_id", "base_job_id", "reward_job_id", "model_version_id"):
        if job.params.get(key) is not None:
            tags[f"controlplane.{key}"] = job.params[key]
    return {
        "experiment": f"{project.slug}/{job.experiment or job.kind}",
        "run_name": f"{job.kind}-{job.pk}",
        "tags": tags,
        "params": job.params,
    }


def send_job(job: Job) -> None:
    """Publish the job's current attempt; raises if the broker does not take it."""
    from controlplane.jobs.gang import gang_nodes, gang_specs

    spec = job_spec(job)
    # A multi-node attempt is one message per node (controlplane/jobs/gang.py).
    specs = gang_specs(job, spec) if gang_nodes(job) > 1 else [spec]
    try:
        for each in specs:
            app.send_task(
                RUN_JOB_TASK,
                args=[each.to_dict()],
                queue=job.queue,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
    except Exception as error:
        broker_health.record_failure(error)
        raise
    broker_health.record_success()


def training_queue() -> str:
    """The gpu queue when a worker consumes it, else cpu (TRAINING_QUEUE overrides).

    The worker registry (their heartbeats, jobs/capacity.py) answers first: a live gpu
    worker there means gpu. Without one (no worker, or workers from before the heartbeat)
    the workers are asked; that costs a broadcast round trip, so the answer is cached a minute.
    When they cannot be asked (broker down) the last answer this process had stands, for
    a few seconds at a time: a blip must not send an hours-long run to the cpu queue.
    Neither the broker nor the cache being down makes this raise (the cache backend fails
    open, controlplane/cache.py): a job request must not fail for it.
    """
    from django.core.cache import cache

    global _last_gpu_answer
    if settings.TRAINING_QUEUE in ("cpu", "gpu"):
        return settings.TRAINING_QUEUE
    if _registry_has_gpu_worker():
        return "gpu"
    gpu_up = cache.get(GPU_WORKERS_CACHE_KEY)
    if gpu_up is None:
        try:
            replies = app.control.inspect(timeout=0.5).active_queues() or {}
        except Exception as error:  # noqa: BLE001 - the broker is down
            gpu_up, ttl = bool(_last_gpu_answer), 5
            log.warning(
                "asking the workers for a gpu queue failed (%s); using %s, the last answer",
                error,
                "gpu" if gpu_up else "cpu",
            )
        else:
            gpu_up = any(q.get("name") == "gpu" for queues in replies.values() for q in queues)
            _last_gpu_answer, ttl = gpu_up, 60
        cache.set(GPU_WORKERS_CACHE_KEY, gpu_up, ttl)
    return "gpu" if gpu_up else "cpu"


_last_gpu_answer: bool | None = None


def _registry_has_gpu_worker() -> bool:
    from django.db import DatabaseError

    from controlplane.jobs.capacity import live_workers

    try:
        return bool(live_workers("gpu"))
    except DatabaseError:  # the broadcast below still answers
        return False
