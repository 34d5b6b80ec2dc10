"""The training loop shared by the three image generators, with checkpoints and grids.

    from engine.vision.config import load_config
    from engine.vision.train import train
    config = load_config("diffusion", "configs/vision/diffusion.yaml")
    summary = train(config, on_metrics=lambda step, metrics: print(step, metrics))
    train(config, resume=True)            # continue from the run's latest checkpoint

Under ``config.run_dir``: ``checkpoints/step_NNNNNN.pt`` (atomic), ``samples/step_NNNNNN.png``
(one row per digit 0..9, fixed noise so grids compare across steps), ``metrics.jsonl``.
The metrics callback receives ``(step, {"train/loss": ..., ...})``; the engine never
talks to a tracking server itself, the caller forwards what it wants.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.metricswindow import MetricsWindow
from engine.vision.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from engine.vision.config import RunConfig, config_from_dict, config_to_dict
from engine.vision.data import NUM_CLASSES, load_digits_split
from engine.vision.evaluate import Evaluator, balanced_labels, sample_in_batches
from engine.vision.images import save_grid
from engine.vision.recipes import Recipe, make_recipe

MetricsCallback = Callable[[int, dict[str, float]], None]
GRID_SEED = 1234  # same noise for every grid of a run


class TrainingError(ValueError):
    """A run that cannot start or continue as asked (e.g. resume from a different model)."""


@dataclass
class TrainSummary:
    kind: str
    steps: int
    seconds: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    grid: str | None = None
    evaluation: dict[str, float] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def kind_of(config: RunConfig) -> str:
    return type(config).__name__.removesuffix("RunConfig").lower()


def set_lr(recipe: Recipe, step: int, config: RunConfig) -> float:
    """Linear warm-up to train.lr, then constant (small models on small data need no decay)."""
    warmup = config.train.warmup_steps
    lr = config.train.lr * min(1.0, (step + 1) / warmup) if warmup else config.train.lr
    for optimizer in recipe.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    return lr


def write_grid(recipe: Recipe, path: Path, per_class: int = 8) -> Path:
    labels = balanced_labels(per_class).view(per_class, NUM_CLASSES).T.reshape(-1)  # row = digit
    images = sample_in_batches(recipe, labels, seed=GRID_SEED)
    return save_grid(images, path, nrow=per_class, scale=4)


def evaluate(
    recipe: Recipe, config: RunConfig, per_class: int, seed: int = 0, **options: Any
) -> dict[str, float]:
    """Accuracy and Frechet distance of ``per_class`` samples per digit (see evaluate.py)."""
    evaluator = Evaluator.load_or_train(
        Path(config.run_dir) / "evaluator.pt",
        config.data.heldout_fraction,
        config.data.split_seed,
    )
    labels = balanced_labels(per_class)
    started = time.perf_counter()
    images = sample_in_batches(recipe, labels, seed=seed, **options)
    scores = evaluator.score(images, labels)
    scores["eval/sample_seconds"] = time.perf_counter() - started
    return scores


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _rng_state(data_gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, Any]:
    return {
        "data": data_gen.get_state(),
        "noise": noise_gen.get_state(),
        "torch": torch.get_rng_state(),
    }


def train(
    config: RunConfig,
    *,
    resume: bool | str | os.PathLike = False,
    on_metrics: MetricsCallback | None = None,
    eval_per_class: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TrainSummary:
    """Train ``config`` for ``config.train.steps`` optimizer steps (from a checkpoint if asked)."""
    kind = kind_of(config)
    train_cfg = config.train
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = pick_device(train_cfg.device)
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.seed)
    data_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    recipe = make_recipe(config, device)
    start_step = 0

    if resume:
        path = latest_checkpoint(run_dir) if resume is True else resolve_checkpoint(resume)
        if path is None:
            raise TrainingError(f"--resume: {run_dir} has no checkpoint yet")
        payload = load_checkpoint(path)
        if payload["kind"] != kind:
            raise TrainingError(f"--resume: {path} is a {payload['kind']} checkpoint, not {kind}")
        saved = config_from_dict(kind, payload["config"])
        if config_to_dict(saved)["model"] != config_to_dict(config)["model"]:
            raise TrainingError(f"--resume: {path} was trained with a different model section")
        recipe.load_state_dict(payload["state"])
        data_gen.set_state(payload["rng"]["data"])
        noise_gen.set_state(payload["rng"]["noise"].to(noise_gen.get_state().device))
        torch.set_rng_state(payload["rng"]["torch"])
        start_step = int(payload["step"])
        if start_step >= train_cfg.steps:
            raise TrainingError(
                f"--resume: {path} is at step {start_step}, not before train.steps "
                f"({train_cfg.steps}); raise train.steps to train further"
            )

    split = load_digits_split(
        config.data.image_size, config.data.heldout_fraction, config.data.split_seed
    )
    images, labels = split.train_images.to(device), split.train_labels.to(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    summary = TrainSummary(kind=kind, steps=start_step, seconds=0.0)
    started = time.perf_counter()
    window = MetricsWindow()

    def checkpoint(step: int) -> None:
        summary.checkpoint = str(
            save_checkpoint(
                run_dir,
                step,
                {
                    "kind": kind,
                    "config": config_to_dict(config),
                    "state": recipe.state_dict(),
                    "rng": _rng_state(data_gen, noise_gen),
                },
                keep_last=train_cfg.keep_last,
            )
        )

    for step in range(start_step, train_cfg.steps):
        lr = set_lr(recipe, step, config)
        index = torch.randint(0, images.shape[0], (train_cfg.batch_size,), generator=data_gen)
        index = index.to(device)
        metrics = recipe.train_step(images[index], labels[index], step, noise_gen)
        window.add({**metrics, "train/lr": lr})
        done = step + 1
        if done % train_cfg.log_interval == 0 or done == train_cfg.steps:
            averaged = window.flush(
                done, "train/images_per_second", train_cfg.batch_size, TrainingError
            )
            summary.last_metrics = averaged
            _append_jsonl(metrics_path, {"step": done, **averaged})
            if on_metrics is not None:
                on_metrics(done, averaged)
            if progress is not None:
                progress(window.describe(kind, done, train_cfg.steps, averaged))
        interval = train_cfg.checkpoint_interval
        if done == train_cfg.steps or (interval and done % interval == 0):
            checkpoint(done)
        sample_every = train_cfg.sample_interval
        if done == train_cfg.steps or (sample_every and done % sample_every == 0):
            summary.grid = str(write_grid(recipe, run_dir / "samples" / f"step_{done:06d}.png"))
        summary.steps = done

    if eval_per_class:
        summary.evaluation = evaluate(recipe, config, eval_per_class)
        _append_jsonl(metrics_path, {"step": summary.steps, **summary.evaluation})
        if on_metrics is not None:
            on_metrics(summary.steps, summary.evaluation)
    summary.seconds = time.perf_counter() - started
    return summary


def load_recipe(checkpoint: str | os.PathLike, device: str = "auto") -> tuple[Recipe, dict]:
    """A trained recipe from a checkpoint file or run folder, ready to sample."""
    payload = load_checkpoint(checkpoint)
    kind = payload.get("kind")
    try:
        config = config_from_dict(kind, payload["config"], source=payload["path"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{payload['path']}: its config does not load: {error}") from None
    recipe = make_recipe(config, pick_device(device))
    recipe.load_state_dict(payload["state"], weights_only=True)
    return recipe, payload
