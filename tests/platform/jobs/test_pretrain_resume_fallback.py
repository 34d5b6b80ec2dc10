"""A pre-training attempt whose resume checkpoint is gone resumes from the one before it."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

PARAMS = {
    "preset": "tiny",
    "train": {"max_iters": 12, "batch_size": 4, "eval_interval": 6, "eval_iters": 1},
    "model": {"block_size": 32},
    "checkpoint_interval": 6,
    "sample_tokens": 5,
}


@pytest.fixture
def trained(team, token_version, run_on_worker):
    """A finished pre-training job with checkpoints at steps 6 and 12."""
    from controlplane.jobs.services import job_create

    job = run_on_worker(
        job_create(
            project=team.project,
            kind="pretrain",
            actor=team.engineer,
            params={"dataset_version_id": token_version.pk, **PARAMS},
        )
    )
    assert job.state == "succeeded", job.error
    return job


def test_a_deleted_latest_checkpoint_falls_back_to_the_previous_one(trained, run_on_worker):
    from controlplane.jobs.models import Job, JobEventRecord
    from controlplane.storage import object_store

    latest = trained.artifacts.get(kind="checkpoint", step=12)
    previous = trained.artifacts.get(kind="checkpoint", step=6)
    object_store().delete(latest.object_key)  # lost, say, to a bucket lifecycle rule
    Job.objects.filter(pk=trained.pk).update(
        state="queued", attempt=2, resume_checkpoint=latest.object_key, finished_at=None
    )
    job = run_on_worker(Job.objects.get(pk=trained.pk))
    assert job.state == "succeeded", job.error
    assert job.result["step"] == 12
    logs = JobEventRecord.objects.filter(job=job, attempt=2, type="log")
    messages = [record.payload["message"] for record in logs]
    assert f"resuming from {previous.object_key} instead of {latest.object_key}" in messages
    # Steps 7-12 were trained again: attempt 2 logged its metrics from step 9 on.
    metric_steps = [
        r.payload["step"] for r in JobEventRecord.objects.filter(job=job, attempt=2, type="metric")
    ]
    assert metric_steps and min(metric_steps) > 6
