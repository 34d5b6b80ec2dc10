"""The demo's post-training walk: LoRA SFT, then DPO, a reward model and PPO on top of it.

Each step is a real job on the cpu worker, started through the same service the API and
the "Post-train this model" form use, on the built-in Shakespeare pairs (prompt = the
opening of a speech, chosen = its real continuation, rejected = a corrupted one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controlplane.jobs.models import Job
from controlplane.jobs.services import job_create
from workers.protocol import JobKind

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.projects.models import Project

PAIRS = 600  # built-in pairs per job: enough for a visible change in a few dozen steps


def _train(steps: int) -> dict:
    return {
        "steps": steps,
        "batch_size": 8,
        "log_interval": max(steps // 5, 1),
        "eval_interval": 0,
        "checkpoint_interval": steps,
    }


def _figures(job: Job, *keys: str) -> str:
    start, end = job.result.get("baseline", {}), job.result.get("evaluation", {})
    shown = [f"{k.split('/')[-1]} {start[k]:.3f} -> {end[k]:.3f}" for k in keys if k in end]
    return ", ".join(shown)


def post_train(command, project: Project, user: User, base: Job, steps: int) -> dict[str, Job]:
    """Run the four post-training jobs, each printing what it changed; returns them by kind."""

    def run(kind: JobKind, params: dict) -> Job:
        params = {"pairs_count": PAIRS, "device": "cpu", "train": _train(steps), **params}
        job = job_create(project=project, kind=kind, actor=user, params=params, experiment="post")
        job = command.wait_succeeded(job)
        share = 100 * job.result["trainable_parameters"] / job.result["total_parameters"]
        command.stdout.write(f"    job {job.pk}: {kind}, {share:.1f}% of the weights train")
        return job

    command.step("Post-training: LoRA SFT, then DPO, a reward model and PPO (cpu worker)")
    lora = run(JobKind.LORA, {"base_job_id": base.pk, "lora": {"r": 4}})
    command.stdout.write(f"      held-out SFT {_figures(lora, 'eval/loss')}")
    sample = (lora.result.get("samples") or [{}])[0]
    if sample:
        command.stdout.write(f"      | {sample['prompt']!r} -> {sample['text']!r}")
    dpo = run(JobKind.DPO, {"base_job_id": lora.pk, "lora": {"r": 4}})
    command.stdout.write(
        f"      held-out preference {_figures(dpo, 'eval/accuracy', 'eval/logp_margin')}"
    )
    reward = run(JobKind.REWARD, {"base_job_id": lora.pk, "lora": {"r": 4}})
    command.stdout.write(f"      held-out {_figures(reward, 'eval/accuracy')}")
    ppo = run(
        JobKind.PPO,
        {
            "base_job_id": lora.pk,
            "reward_job_id": reward.pk,
            "lora": {"r": 4},
            "ppo": {"rollout_batch_size": 8, "max_new_tokens": 24, "ppo_epochs": 2},
        },
    )
    command.stdout.write(f"      held-out {_figures(ppo, 'eval/reward', 'eval/kl')}")
    return {"lora": lora, "dpo": dpo, "reward": reward, "ppo": ppo}
