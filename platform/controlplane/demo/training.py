"""The demo's training walk: a small GPT pre-trained on the token shards, and a diffusion
model on the 8x8 digits; both on the cpu worker, with metrics to their pages and MLflow."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from django.urls import reverse

from controlplane.demo.figures import duration, metric, percent
from controlplane.demo.plan import DemoPlan, warmup
from controlplane.jobs.models import ArtifactKind, Job
from controlplane.jobs.services import job_create
from workers.protocol import JobKind

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.datasets.models import DatasetVersion
    from controlplane.projects.models import Project

SAMPLE_LINES = 8  # of the pre-trained model's sample, printed (the page shows it all)


def job_seconds(job: Job) -> float | None:
    """How long the job ran (the job page's header shows the same)."""
    if job.started_at is None or job.finished_at is None:
        return None
    return (job.finished_at - job.started_at).total_seconds()


def job_path(job: Job) -> str:
    return reverse("job-detail", args=[job.project_id, job.pk])


def _guessing(tokens: DatasetVersion) -> str:
    """The loss of a model that knows nothing (a uniform guess), for scale."""
    pipeline = tokens.produced_by
    vocabulary = (
        ((pipeline.result or {}).get("tokenizer") or {}).get("vocab_size") if pipeline else None
    )
    if not vocabulary:
        return ""
    return f" (a uniform guess among {vocabulary} characters: {metric(math.log(vocabulary))})"


def pretrain(command, project: Project, user: User, tokens: DatasetVersion, plan: DemoPlan) -> Job:
    command.step("Pre-training a small GPT on the cpu worker (metrics to the page and MLflow)")
    steps = plan.pretrain_steps
    params = {
        "dataset_version_id": tokens.pk,
        # nanoGPT's shakespeare-char CPU recipe: 4 layers, 128 wide, 64 characters of context.
        "preset": "shakespeare-char",
        "train": {
            "max_iters": steps,
            "batch_size": 12,
            "eval_interval": max(steps // 8, 10),
            "eval_iters": 20,
            "log_interval": min(10, steps),
        },
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": warmup(steps)},
        "checkpoint_interval": max(steps // 4, 10),
        "device": "cpu",
        "sample_prompts": ["ROMEO:"],
        "sample_tokens": 300,
    }
    command.stdout.write(
        f"    {steps} steps of 12 x 64 characters (nanoGPT's shakespeare-char recipe); "
        "the loss curves fill in live on the job's page"
    )
    job = job_create(
        project=project, kind=JobKind.PRETRAIN, actor=user, params=params, experiment="demo"
    )
    job = command.wait_succeeded(job, "training")
    result = job.result
    checkpoints = job.artifacts.filter(kind=ArtifactKind.CHECKPOINT).count()
    command.stdout.write(
        f"    job {job.pk}: {result['step']} steps in {duration(job_seconds(job))}, "
        f"train loss {metric(result['train_loss'])}, val loss {metric(result['val_loss'])}"
        f"{_guessing(tokens)}, {result['tokens_per_second']:,.0f} tokens/s, "
        f"{checkpoints} checkpoints, MLflow run {job.tracking_run_id or '-'}"
    )
    sample = result["samples"][0]
    command.stdout.write("    its sample, unedited (temperature 0.8):")
    for line in (sample["prompt"] + sample["text"]).splitlines()[:SAMPLE_LINES]:
        command.stdout.write(f"      | {line}")
    command.look_at(
        "pre-training: the loss curves, the checkpoints, the whole sample", job_path(job)
    )
    return job


def image_model(command, project: Project, user: User, plan: DemoPlan) -> Job:
    command.step("Image generation: a small diffusion model on the 8x8 digits (cpu worker)")
    steps = plan.diffusion_steps
    params = {
        "preset": "tiny",
        "device": "cpu",
        "train": {
            "steps": steps,
            "batch_size": plan.diffusion_batch,
            # The tiny model learns four times faster at 2e-3 than at the recipe's 5e-4.
            "lr": 2e-3,
            "log_interval": min(10, steps),
            "sample_interval": max(steps // 4, 1),
            "checkpoint_interval": steps,
        },
        "eval_per_class": plan.diffusion_eval_per_class,
    }
    command.stdout.write(
        f"    {steps} steps of {plan.diffusion_batch} digits; a sample grid every "
        f"{max(steps // 4, 1)} steps (the same noise each time, so the grids show the learning)"
    )
    job = job_create(
        project=project, kind=JobKind.DIFFUSION, actor=user, params=params, experiment="digits"
    )
    job = command.wait_succeeded(job)
    result = job.result
    grids = job.artifacts.filter(name__startswith="samples/").order_by("-name")
    command.stdout.write(
        f"    job {job.pk}: {result['steps']} steps in {duration(job_seconds(job))}, "
        f"loss {metric(result['metrics'].get('train/loss'))}, {grids.count()} sample grids "
        "(one row per digit 0-9)"
    )
    evaluation = result.get("evaluation") or {}
    if "eval/accuracy" in evaluation:
        command.stdout.write(
            f"    a classifier trained on real digits reads {percent(evaluation['eval/accuracy'])} "
            f"of {evaluation['eval/samples']:.0f} generated digits as the digit asked for "
            f"(Frechet distance to held-out digits {metric(evaluation['eval/frechet_distance'])})"
        )
    command.look_at("diffusion: the sample grids, from noise to digits", job_path(job))
    last = grids.first()
    if last is not None:
        command.look_at(
            f"diffusion: the last grid alone ({last.name})",
            reverse("job-artifact", args=[project.pk, job.pk, last.pk]),
        )
    return job
