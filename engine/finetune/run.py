"""The post-training run: sft, lora, qlora, reward, dpo or ppo from one config, resumable.

    from engine.finetune.config import load_config
    from engine.finetune.run import run
    summary = run(load_config("dpo", "configs/finetune/dpo.yaml"), callbacks=[MyCallback()])
    run(config, resume=True)          # continue from the run's latest checkpoint

    python -m engine train dpo configs/finetune/dpo.yaml [--resume] [--set train.steps=50]

Under ``config.run_dir``: ``checkpoints/step_NNNNNN.pt`` (atomic; only what trains: the
adapters and heads under LoRA, every weight otherwise, plus optimizer and RNG state),
``metrics.jsonl``, and at the end the outputs that chain into the next run:

- ``model/``   the policy with any adapters merged, in the Hugging Face GPT-2 layout
  (config.json, model.safetensors, tokenizer.json): a base for the next run, for
  ``python -m engine generate`` and for the platform's next job (all kinds but reward);
- ``adapter/`` the LoRA adapters alone (lora, qlora, and use_lora runs);
- ``reward/``  the reward model (reward runs), the ``base.reward_model`` of a PPO run;
- ``samples.json`` completions of a few held-out prompts (policies).

Each kind is an *objective* next to its method (sft.py, reward.py, dpo.py, ppo.py; the
interface in objective.py): what trains, the loss of one step, the held-out evaluation.
build.py assembles one from the config, outputs.py writes what the run leaves; the loop
here (schedule, clipping, logging, checkpoints, resume) is shared. Callbacks follow the
kit's protocol (engine/loop/callbacks.py): ``on_metrics``, ``on_checkpoint`` for each
checkpoint file, ``should_stop`` to end the run at a checkpoint (no outputs are written
then).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.finetune.build import (
    build_objective,
    load_base,
    load_records,
    make_optimizer,
    parameter_counts,
    trainable_state,
    weights_fingerprint,
)
from engine.finetune.config import FinetuneRunConfig, config_to_dict
from engine.finetune.dpo import DPOObjective
from engine.finetune.objective import FinetuneError, Objective, RandomPicks, optimizer_step
from engine.finetune.outputs import write_outputs, write_samples
from engine.finetune.sft import ChatTemplate
from engine.loop.callbacks import Callback, CallbackList
from engine.loop.checkpoints import StepFiles
from engine.loop.device import pick_device, pick_dtype, set_threads
from engine.loop.metrics import JsonlMetrics, MetricsWindow
from engine.loop.schedule import warmup_for

__all__ = ["CHECKPOINTS", "FinetuneCheckpoints", "FinetuneError", "RunSummary", "run"]

FORMAT = "engine.finetune.checkpoint/1"
SAMPLE_PROMPTS = 3  # held-out prompts completed into samples.json when none are configured


class FinetuneCheckpoints(StepFiles):
    format = FORMAT
    description = "a post-training checkpoint"
    error = FinetuneError


CHECKPOINTS = FinetuneCheckpoints  # the run's checkpoint files (tests read them through it)


@dataclass
class RunSummary:
    kind: str
    steps: int
    seconds: float
    trainable_parameters: int
    total_parameters: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)  # the last held-out evaluation
    baseline: dict[str, float] = field(default_factory=dict)  # the same, before the first step
    checkpoint: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # "model" | "adapter" | "reward" -> dir
    samples: list[dict[str, str]] = field(default_factory=list)
    stopped: bool = False  # a callback's should_stop() ended the run before train.steps


@dataclass
class _Run:
    """What the steps of one run share: built once by run(), used by _train_steps."""

    config: FinetuneRunConfig
    objective: Objective
    optimizer: torch.optim.Optimizer
    step_gen: torch.Generator  # the batch picks; checkpointed, so a resume picks the same
    store: FinetuneCheckpoints
    hooks: CallbackList
    fingerprint: str  # of the base weights: a resume must start from the same base
    summary: RunSummary

    def save_checkpoint(self, step: int) -> None:
        payload = {
            "kind": self.config.kind,
            "config": config_to_dict(self.config),
            "state": trainable_state(self.objective.module),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"step": self.step_gen.get_state(), "torch": torch.get_rng_state()},
            "extra": self.objective.extra_state(),
            "base_fingerprint": self.fingerprint,
        }
        path = self.store.save(step, payload)
        self.summary.checkpoint = str(path)
        self.hooks.checkpoint(step, path)

    def evaluate(self, step: int) -> dict[str, float]:
        self.objective.module.eval()
        scores = self.objective.evaluate()
        self.hooks.metrics(step, scores)
        return scores


def run(
    config: FinetuneRunConfig,
    *,
    resume: bool | str | os.PathLike = False,
    callbacks: Iterable[Callback] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunSummary:
    """Train ``config`` for ``train.steps`` steps (from a checkpoint if asked); write outputs."""
    train_cfg = config.train
    set_threads(train_cfg.threads)
    device = pick_device(train_cfg.device, FinetuneError)
    dtype = pick_dtype(train_cfg.dtype, device)
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.seed)
    model, tokenizer, tokenizer_file = load_base(config)
    fingerprint = weights_fingerprint(model)
    try:
        template = ChatTemplate(tokenizer)
    except ValueError as error:
        raise FinetuneError(f"base.path: {error}") from None
    train_records, heldout_records = load_records(config, template, model.config.block_size)
    objective = build_objective(
        config, model, tokenizer, template, train_records, heldout_records, device, dtype
    )
    optimizer = make_optimizer(objective, config)
    step_gen = torch.Generator().manual_seed(config.seed)
    store = FinetuneCheckpoints(run_dir, keep_last=train_cfg.keep_last)
    start = 0
    if not resume and store.latest() is not None:
        raise FinetuneError(
            f"{run_dir} holds checkpoints of an earlier run; resume it (--resume) "
            "or choose another run_dir"
        )
    if resume:
        start = _resume(resume, store, config, objective, optimizer, step_gen, fingerprint)
    elif isinstance(objective, DPOObjective) and config.dpo.precompute_reference:
        objective.precompute()
    trainable, total = parameter_counts(objective.module)
    run_dir.mkdir(parents=True, exist_ok=True)
    hooks = CallbackList([JsonlMetrics(run_dir / "metrics.jsonl"), *(callbacks or ())])
    summary = RunSummary(config.kind, start, 0.0, trainable, total)
    if progress is not None:
        share = 100 * trainable / total
        progress(f"{config.kind}: {trainable:,} of {total:,} parameters train ({share:.2f}%)")
    state = _Run(config, objective, optimizer, step_gen, store, hooks, fingerprint, summary)
    hooks.train_start({"kind": config.kind, "start_step": start, "total_steps": train_cfg.steps})
    started = time.perf_counter()
    if train_cfg.eval_at_start and start == 0:
        summary.baseline = state.evaluate(0)
    _train_steps(state, progress)
    if not summary.stopped:
        summary.outputs, policy = write_outputs(objective, tokenizer, tokenizer_file, run_dir)
        if policy is not None:
            prompts = config.sample_prompts or [
                r["prompt"] for r in heldout_records[:SAMPLE_PROMPTS]
            ]
            summary.samples = write_samples(policy, tokenizer, template, prompts, run_dir)
    summary.seconds = time.perf_counter() - started
    hooks.train_end({"step": summary.steps, "seconds": summary.seconds, "stopped": summary.stopped})
    return summary


def _train_steps(state: _Run, progress: Callable[[str], None] | None) -> None:
    """The steps from ``summary.steps`` on, with logging, evaluations and checkpoints."""
    config, summary = state.config, state.summary
    train_cfg = config.train
    pick = RandomPicks(state.step_gen)
    window = MetricsWindow()
    for step in range(summary.steps, train_cfg.steps):
        lr = _learning_rate(config, step)
        metrics = optimizer_step(
            state.objective, state.optimizer, pick, lr=lr, grad_clip=train_cfg.grad_clip
        )
        window.add({**metrics, "train/lr": lr})
        done = step + 1
        last = done == train_cfg.steps
        if done % train_cfg.log_interval == 0 or last:
            averaged = window.flush(done, "train/steps_per_second", 1, FinetuneError)
            summary.last_metrics = averaged
            state.hooks.metrics(done, averaged)
            if progress is not None:
                progress(window.describe(config.kind, done, train_cfg.steps, averaged))
        every = train_cfg.eval_interval
        if last or (every and done % every == 0):
            summary.evaluation = state.evaluate(done)
        summary.stopped = not last and state.hooks.should_stop()
        interval = train_cfg.checkpoint_interval
        if last or summary.stopped or (interval and done % interval == 0):
            state.save_checkpoint(done)
        summary.steps = done
        if summary.stopped:
            return


def _learning_rate(config: FinetuneRunConfig, step: int) -> float:
    """Linear warm-up to the peak, then constant."""
    warmup = warmup_for(config.train.warmup_steps, config.train.steps)
    return config.lr * min(1.0, (step + 1) / warmup) if warmup else config.lr


def _resume(resume, store, config, objective, optimizer, step_gen, base_fingerprint) -> int:
    path = store.latest() if resume is True else FinetuneCheckpoints.resolve(resume)
    if path is None:
        raise FinetuneError(f"--resume: {config.run_dir} has no checkpoint yet")
    payload = FinetuneCheckpoints.load(path)
    if payload["kind"] != config.kind:
        raise FinetuneError(
            f"--resume: {path} is a {payload['kind']} checkpoint, not {config.kind}"
        )
    saved, ours = payload["config"], config_to_dict(config)
    for key in ("lora", "use_lora"):
        if saved[key] != ours[key]:
            raise FinetuneError(f"--resume: {path} was trained with a different {key} section")
    # The base is compared by content: a re-dispatched job downloads it to a new folder.
    if payload["base_fingerprint"] != base_fingerprint:
        raise FinetuneError(f"--resume: {path} was trained from a different base model")
    missing = set(trainable_state(objective.module)) - set(payload["state"])
    if missing:
        raise FinetuneError(f"--resume: {path} lacks {sorted(missing)[:4]}")
    objective.module.load_state_dict(payload["state"], strict=False)
    optimizer.load_state_dict(payload["optimizer"])
    step_gen.set_state(payload["rng"]["step"])
    torch.set_rng_state(payload["rng"]["torch"])
    objective.load_extra_state(payload["extra"])
    step = int(payload["step"])
    if step >= config.train.steps:
        raise FinetuneError(
            f"--resume: {path} is at step {step}, not before train.steps ({config.train.steps}); "
            "raise train.steps to train further"
        )
    return step
