"""The demo's training walk: a small GPT pre-trained on the token shards, and a diffusion
model on the 8x8 digits; both on the cpu worker, with metrics to their pages and MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controlplane.jobs.models import ArtifactKind, Job
from controlplane.jobs.services import job_create
from workers.protocol import JobKind

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.datasets.models import DatasetVersion
    from controlplane.projects.models import Project


def pretrain(command, project: Project, user: User, tokens: DatasetVersion, steps: int) -> Job:
    command.step("Pre-training a small GPT on the cpu worker (metrics to the page and MLflow)")
    params = {
        "dataset_version_id": tokens.pk,
        "preset": "shakespeare-char",
        "train": {
            "max_iters": steps,
            "batch_size": 12,
            "eval_interval": 50,
            "eval_iters": 5,
            "log_interval": 10,
        },
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": 20},
        "checkpoint_interval": 50,
        "device": "cpu",
        "sample_prompts": ["ROMEO:"],
        "sample_tokens": 120,
    }
    job = job_create(
        project=project, kind=JobKind.PRETRAIN, actor=user, params=params, experiment="demo"
    )
    job = command.wait_succeeded(job, "training")
    result = job.result
    checkpoints = job.artifacts.filter(kind=ArtifactKind.CHECKPOINT).count()
    command.stdout.write(
        f"    job {job.pk}: {result['step']} steps, train loss {result['train_loss']:.3f}, "
        f"val loss {result['val_loss']:.3f}, {result['tokens_per_second']:,.0f} tokens/s, "
        f"{checkpoints} checkpoints, MLflow run {job.tracking_run_id or '-'}"
    )
    sample = result["samples"][0]
    for line in (sample["prompt"] + sample["text"]).splitlines()[:6]:
        command.stdout.write(f"      | {line}")
    return job


def image_model(command, project: Project, user: User, steps: int) -> None:
    command.step("Image generation: a small diffusion model on the 8x8 digits (cpu worker)")
    params = {
        "preset": "tiny",
        "device": "cpu",
        "train": {"steps": steps, "log_interval": 10, "sample_interval": max(steps // 2, 1)},
    }
    job = job_create(
        project=project, kind=JobKind.DIFFUSION, actor=user, params=params, experiment="digits"
    )
    job = command.wait_succeeded(job)
    grids = job.artifacts.filter(name__startswith="samples/").count()
    command.stdout.write(
        f"    job {job.pk}: {job.result['steps']} steps, loss {job.result['metrics'].get('train/loss', 0):.3f}, "
        f"{grids} sample grids (one row per digit) on its page"
    )
