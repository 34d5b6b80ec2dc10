"""The training loop shared by the three image generators, with checkpoints and grids.

    from engine.vision.config import load_config
    from engine.vision.train import train
    config = load_config("diffusion", "configs/vision/diffusion.yaml")
    summary = train(config, callbacks=[MyCallback()])     # engine.loop.callbacks.Callback
    train(config, resume=True)            # continue from the run's latest checkpoint

Under ``config.run_dir``: ``checkpoints/step_NNNNNN.pt`` (atomic), ``samples/step_NNNNNN.png``
(one row per digit 0..9, fixed noise so grids compare across steps), ``metrics.jsonl``.
Callbacks (engine/loop/callbacks.py) hear ``on_metrics(step, {"train/loss": ...})``,
``on_checkpoint(step, path)`` for each checkpoint file, ``on_artifact(step, path)`` for
each grid, and may end the run with ``should_stop()``; the engine never talks to a
tracking server itself, the caller forwards what it wants.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.loop.callbacks import Callback, CallbackList
from engine.loop.device import pick_device, set_threads
from engine.loop.metrics import JsonlMetrics, MetricsWindow
from engine.loop.schedule import warmup_for
from engine.vision.checkpoint import CheckpointError, VisionCheckpoints, load_checkpoint
from engine.vision.config import RunConfig, config_from_dict, config_to_dict
from engine.vision.data import NUM_CLASSES, load_digits_split
from engine.vision.evaluate import Evaluator, balanced_labels, sample_in_batches
from engine.vision.images import save_grid
from engine.vision.recipes import Recipe, make_recipe

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
    stopped: bool = False  # a callback's should_stop() ended the run before train.steps


def kind_of(config: RunConfig) -> str:
    return type(config).__name__.removesuffix("RunConfig").lower()


def set_lr(recipe: Recipe, step: int, config: RunConfig) -> float:
    """Linear warm-up to train.lr, then constant (small models on small data need no decay)."""
    warmup = warmup_for(config.train.warmup_steps, config.train.steps)
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


@dataclass
class _Generators:
    """The run's random streams, saved in every checkpoint so a resume continues them."""

    data: torch.Generator  # which images make each batch
    noise: torch.Generator  # the models' noise (diffusion steps, GAN latents ...)

    def state(self) -> dict[str, Any]:
        return {
            "data": self.data.get_state(),
            "noise": self.noise.get_state(),
            "torch": torch.get_rng_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.data.set_state(state["data"])
        self.noise.set_state(state["noise"].to(self.noise.get_state().device))
        torch.set_rng_state(state["torch"])


def _resume(
    resume: bool | str | os.PathLike,
    store: VisionCheckpoints,
    config: RunConfig,
    recipe: Recipe,
    generators: _Generators,
) -> int:
    """Restore the recipe and random streams from a checkpoint; return its step."""
    kind = kind_of(config)
    path = store.latest() if resume is True else VisionCheckpoints.resolve(resume)
    if path is None:
        raise TrainingError(f"--resume: {config.run_dir} has no checkpoint yet")
    payload = load_checkpoint(path)
    if payload["kind"] != kind:
        raise TrainingError(f"--resume: {path} is a {payload['kind']} checkpoint, not {kind}")
    saved = config_from_dict(kind, payload["config"])
    if config_to_dict(saved)["model"] != config_to_dict(config)["model"]:
        raise TrainingError(f"--resume: {path} was trained with a different model section")
    recipe.load_state_dict(payload["state"])
    generators.load(payload["rng"])
    step = int(payload["step"])
    if step >= config.train.steps:
        raise TrainingError(
            f"--resume: {path} is at step {step}, not before train.steps "
            f"({config.train.steps}); raise train.steps to train further"
        )
    return step


def train(
    config: RunConfig,
    *,
    resume: bool | str | os.PathLike = False,
    callbacks: Iterable[Callback] | None = None,
    eval_per_class: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TrainSummary:
    """Train ``config`` for ``config.train.steps`` optimizer steps (from a checkpoint if asked)."""
    kind = kind_of(config)
    set_threads(config.train.threads)
    device = pick_device(config.train.device, TrainingError)
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.seed)
    generators = _Generators(
        data=torch.Generator().manual_seed(config.seed),
        noise=torch.Generator(device=device).manual_seed(config.seed + 1),
    )
    recipe = make_recipe(config, device)
    store = VisionCheckpoints(run_dir, keep_last=config.train.keep_last)
    start_step = _resume(resume, store, config, recipe, generators) if resume else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    hooks = CallbackList([JsonlMetrics(run_dir / "metrics.jsonl"), *(callbacks or ())])
    hooks.train_start({"kind": kind, "start_step": start_step, "total_steps": config.train.steps})
    summary = TrainSummary(kind=kind, steps=start_step, seconds=0.0)
    started = time.perf_counter()
    _train_steps(config, recipe, device, generators, store, hooks, summary, progress)
    if eval_per_class and not summary.stopped:
        summary.evaluation = evaluate(recipe, config, eval_per_class)
        hooks.metrics(summary.steps, summary.evaluation)
    summary.seconds = time.perf_counter() - started
    hooks.train_end({"step": summary.steps, "seconds": summary.seconds, "stopped": summary.stopped})
    return summary


def _train_steps(
    config: RunConfig,
    recipe: Recipe,
    device: torch.device,
    generators: _Generators,
    store: VisionCheckpoints,
    hooks: CallbackList,
    summary: TrainSummary,
    progress: Callable[[str], None] | None,
) -> None:
    """The optimizer steps from ``summary.steps`` on, with logging, checkpoints and grids."""
    kind, train_cfg, run_dir = summary.kind, config.train, Path(config.run_dir)
    split = load_digits_split(
        config.data.image_size, config.data.heldout_fraction, config.data.split_seed
    )
    images, labels = split.train_images.to(device), split.train_labels.to(device)
    window = MetricsWindow()
    for step in range(summary.steps, train_cfg.steps):
        lr = set_lr(recipe, step, config)
        index = torch.randint(
            0, images.shape[0], (train_cfg.batch_size,), generator=generators.data
        ).to(device)
        metrics = recipe.train_step(images[index], labels[index], step, generators.noise)
        window.add({**metrics, "train/lr": lr})
        done = step + 1
        last = done == train_cfg.steps
        if done % train_cfg.log_interval == 0 or last:
            averaged = window.flush(
                done, "train/images_per_second", train_cfg.batch_size, TrainingError
            )
            summary.last_metrics = averaged
            hooks.metrics(done, averaged)
            if progress is not None:
                progress(window.describe(kind, done, train_cfg.steps, averaged))
        summary.stopped = not last and hooks.should_stop()
        interval = train_cfg.checkpoint_interval
        if last or summary.stopped or (interval and done % interval == 0):
            payload = {
                "kind": kind,
                "config": config_to_dict(config),
                "state": recipe.state_dict(),
                "rng": generators.state(),
            }
            path = store.save(done, payload)
            summary.checkpoint = str(path)
            hooks.checkpoint(done, path)
        sample_every = train_cfg.sample_interval
        if last or (sample_every and done % sample_every == 0):
            grid = write_grid(recipe, run_dir / "samples" / f"step_{done:06d}.png")
            summary.grid = str(grid)
            hooks.artifact(done, grid)
        summary.steps = done
        if summary.stopped:
            return


def load_recipe(checkpoint: str | os.PathLike, device: str = "auto") -> tuple[Recipe, dict]:
    """A trained recipe from a checkpoint file or run folder, ready to sample."""
    payload = load_checkpoint(checkpoint)
    kind = payload.get("kind")
    try:
        config = config_from_dict(kind, payload["config"], source=payload["path"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{payload['path']}: its config does not load: {error}") from None
    recipe = make_recipe(config, pick_device(device, TrainingError))
    recipe.load_state_dict(payload["state"], weights_only=True)
    return recipe, payload
