"""The demo's post-training walk: LoRA SFT, then DPO, a reward model and PPO on top of it.

Each step is a real job on the cpu worker, started through the same service the API and
the "Post-train this model" form use, on the built-in Shakespeare pairs (prompt = the
opening of a speech, chosen = its real continuation, rejected = the same words shuffled:
a preference a small model can learn in a hundred steps, where telling another speech's
lines from the real ones is beyond it). Each job evaluates on held-out pairs before its
first step and after its last; the demo prints both, as the job's page shows them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.urls import reverse

from controlplane.demo.figures import duration, metric, percent
from controlplane.demo.plan import DemoPlan, warmup
from controlplane.demo.training import job_path, job_seconds
from controlplane.jobs.models import Job
from controlplane.jobs.services import job_create
from workers.protocol import JobKind

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.projects.models import Project

LORA = {"r": 8, "alpha": 16}
# What each kind's result shows first: held-out figures, before -> after.
SHOWN = {
    JobKind.LORA: ("eval/loss",),
    JobKind.DPO: ("eval/accuracy", "eval/margin"),
    JobKind.REWARD: ("eval/accuracy", "eval/margin"),
    JobKind.PPO: ("eval/reward", "eval/kl"),
}
WHAT = {
    JobKind.LORA: "loss of the real continuation of held-out speeches",
    JobKind.DPO: "held-out pairs where the model prefers the real continuation",
    JobKind.REWARD: "held-out pairs the reward model ranks right",
    JobKind.PPO: "reward of its own answers to held-out prompts",
}


def _train(steps: int, batch_size: int, evaluations: int = 4) -> dict:
    return {
        "steps": steps,
        "batch_size": batch_size,
        "warmup_steps": warmup(steps),
        "log_interval": max(steps // 20, 1),
        "eval_interval": max(steps // evaluations, 1),
        "checkpoint_interval": steps,
    }


def _figure(key: str, value: float) -> str:
    return percent(value) if key.endswith("accuracy") else metric(value)


def before_after(job: Job) -> str:
    """The kind's held-out figures before the first step and after the last."""
    start, end = job.result.get("baseline", {}), job.result.get("evaluation", {})
    shown = [
        f"{key.split('/')[-1]} {_figure(key, start[key])} -> {_figure(key, end[key])}"
        for key in SHOWN[JobKind(job.kind)]
        if key in start and key in end
    ]
    return ", ".join(shown)


def _answer(job: Job) -> dict | None:
    samples = job.result.get("samples") or []
    return samples[0] if samples else None


def post_train(command, project: Project, user: User, base: Job, plan: DemoPlan) -> dict[str, Job]:
    """Run the four post-training jobs, each printing what it changed; returns them by kind."""

    def run(kind: JobKind, params: dict, train: dict) -> Job:
        params = {
            "pairs_count": plan.pairs,
            "device": "cpu",
            "train": train,
            "lora": LORA,
            **params,
        }
        job = job_create(project=project, kind=kind, actor=user, params=params, experiment="post")
        job = command.wait_succeeded(job)
        share = 100 * job.result["trainable_parameters"] / job.result["total_parameters"]
        command.stdout.write(
            f"    job {job.pk}: {kind}, {job.result['steps']} steps in "
            f"{duration(job_seconds(job))}, {share:.1f}% of the weights train"
        )
        command.stdout.write(f"      {WHAT[kind]}: {before_after(job)}")
        return job

    command.step("Post-training: LoRA SFT, then DPO, a reward model and PPO (cpu worker)")
    command.stdout.write(
        f"    {plan.pairs} built-in pairs from the plays (a tenth held out): a speech's opening, "
        "its real continuation (chosen), and the same words shuffled (rejected)"
    )
    train = _train(plan.posttrain_steps, plan.posttrain_batch)
    lora = run(JobKind.LORA, {"base_job_id": base.pk}, train)
    shuffled = {"base_job_id": lora.pk, "pairs_corruption": "shuffle"}
    dpo = run(JobKind.DPO, shuffled, _train(plan.dpo_steps, plan.posttrain_batch))
    reward = run(JobKind.REWARD, shuffled, train)
    ppo = run(
        JobKind.PPO,
        {
            "base_job_id": lora.pk,
            "reward_job_id": reward.pk,
            "ppo": {
                "rollout_batch_size": plan.ppo_rollouts,
                "max_new_tokens": plan.ppo_new_tokens,
                "ppo_epochs": 2,
                # At the default 0.05 the policy games the reward model within 30 steps
                # ("wisesss", a KL of 8); 0.4 keeps it nearer its start as the reward rises.
                "kl_coef": 0.4,
            },
        },
        # Each evaluation generates a batch of answers to held-out prompts: three will do.
        _train(plan.ppo_steps, plan.posttrain_batch, evaluations=2),
    )
    answers = [(job.kind, _answer(job)) for job in (lora, dpo, ppo)]
    prompt = next((answer["prompt"] for _, answer in answers if answer), None)
    if prompt is not None:
        command.stdout.write(f"    a held-out prompt: {prompt!r}")
        for kind, answer in answers:
            if answer and answer["prompt"] == prompt:
                command.stdout.write(f"      {kind:>4} answers {answer['text']!r}")
    for job in (lora, dpo, reward, ppo):
        command.look_at(f"{job.kind}: before and after, on held-out pairs", job_path(job))
    command.look_at(
        "post-training runs compared",
        reverse("experiment-compare", args=[project.pk]) + "?experiment=post",
    )
    return {"lora": lora, "dpo": dpo, "reward": reward, "ppo": ppo}
