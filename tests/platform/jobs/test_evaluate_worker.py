"""The whole chain on the worker, in this process: the data pipeline tokenizes two plays,
a tiny pre-training job trains on them, its model is registered (the registry's own
services: copy and verify), and an `evaluate` job scores that version."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.django_db

PRETRAIN = {
    "preset": "tiny",
    "train": {"max_iters": 4, "batch_size": 4, "eval_interval": 4, "eval_iters": 1},
    "model": {"block_size": 32},
    "sample_tokens": 10,
}


def _version_of(job):
    """The job's model registered as the registry does it: rows, then the control task's
    copy and sha256 check (run here directly: the test's transaction never commits)."""
    from controlplane.registry.services import finish_registration, version_register

    version = version_register(
        project=job.project, actor=job.created_by, job=job, model_name="plays"
    )
    version = finish_registration(version.pk)
    assert version.state == "ready", version.refused_reason
    return version


def test_a_pretrained_model_is_evaluated_on_its_own_held_out_data(
    team, token_version, run_on_worker
):
    from controlplane.jobs.services import job_create

    pretrain = run_on_worker(
        job_create(
            project=team.project,
            kind="pretrain",
            actor=team.engineer,
            params={"dataset_version_id": token_version.pk, **PRETRAIN},
        )
    )
    assert pretrain.state == "succeeded", pretrain.error
    version = _version_of(pretrain)
    job = run_on_worker(
        job_create(
            project=team.project,
            kind="evaluate",
            actor=team.engineer,
            params={
                "model_version_id": version.pk,
                "samples": 8,
                "sample_tokens": 60,
                "eval_batches": 4,
            },
        )
    )
    assert job.state == "succeeded", job.error
    assert job.params["dataset_version_id"] == token_version.pk
    evaluation = job.model_evaluation
    metrics = evaluation.metrics
    # A few steps of training: a loss near chance over the plays' ~80 characters.
    assert 0 < metrics["val_loss"] < 2 * math.log(100)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["samples"] == 8.0 and metrics["memorisation_spans"] > 0
    assert 0.0 <= metrics["memorisation_share"] <= 1.0
    assert evaluation.details["memorisation"]["capped"] is False
    assert evaluation.details["memorisation"]["training_chars"] > 10_000
