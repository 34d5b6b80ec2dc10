"""What one post-training kind trains, and the optimizer step every kind's loop shares.

    objective = SFTObjective(model, rows, eval_rows, batch_size=8, eval_batches=4, device=device)
    history = train_objective(objective, steps=200, lr=1e-4)     # metrics of every step

An *objective* (sft.py, reward.py, dpo.py, ppo.py) owns the model part that trains
(``module``), the loss of one step on batches it picks with a :class:`BatchOrder`, its
held-out evaluation, and any state a resume needs. The loops around it:
``engine.finetune.run.run`` (config in, checkpoints, metrics, outputs) and
:func:`train_objective` (the smallest form: tests, benchmarks) both make their steps with
:func:`optimizer_step`.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn as nn


class FinetuneError(ValueError):
    """A run that cannot start or continue as configured; the message says why."""


class BatchOrder:
    """Which ``size`` of ``count`` items (rows, batches, prompts) the next step uses."""

    def __call__(self, count: int, size: int) -> list[int]:
        raise NotImplementedError


class RandomPicks(BatchOrder):
    """Drawn with replacement from a torch generator (run() checkpoints its state)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, count: int, size: int) -> list[int]:
        return torch.randint(0, count, (size,), generator=self.generator).tolist()


class EpochOrder(BatchOrder):
    """Every item once per epoch, in a fresh seeded shuffle (the standalone loops' order).

    ``from_end`` takes each epoch's shuffle from its end: the order dpo_train and
    reward_train have always drawn batches in, kept so their figures stay the same.
    """

    def __init__(self, seed: int = 0, *, from_end: bool = False):
        self.random = random.Random(seed)
        self.from_end = from_end
        self.queue: list[int] = []

    def __call__(self, count: int, size: int) -> list[int]:
        if len(self.queue) < size:
            fresh = list(range(count))
            self.random.shuffle(fresh)
            self.queue += (fresh[::-1] if self.from_end else fresh) * max(1, -(-size // count))
        picked, self.queue = self.queue[:size], self.queue[size:]
        return picked


class Objective:
    """What one kind trains and how; ``module`` holds every trainable parameter."""

    module: nn.Module

    def loss(self, pick: BatchOrder) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The loss of one step (None when the objective steps its own optimizer: PPO)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def optimizer_step(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    pick: BatchOrder,
    *,
    lr: float,
    grad_clip: float | None,
) -> dict[str, float]:
    """One training step at learning rate ``lr``; its metrics (``train/grad_norm`` if clipped)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    objective.module.train()
    loss, metrics = objective.loss(pick)
    if loss is not None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            metrics["train/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        optimizer.step()
    return metrics


def train_objective(
    objective: Objective,
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    seed: int = 0,
    order: BatchOrder | None = None,
) -> list[dict[str, float]]:
    """A plain AdamW loop over the trainable parameters, batches in epoch order; every step's
    metrics. No checkpoints, schedule or evaluation: that is ``run()``."""
    params = trainable(objective.module)
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    pick = order if order is not None else EpochOrder(seed)
    return [
        optimizer_step(objective, optimizer, pick, lr=lr, grad_clip=grad_clip) for _ in range(steps)
    ]


def train_pairs(
    objective: Objective,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    grad_clip: float | None,
    seed: int,
) -> list[dict[str, float]]:
    """:func:`train_objective` over preference batches, drawn in the order dpo_train and
    reward_train have always used (each epoch's shuffle from its end): their figures hold."""
    return train_objective(
        objective,
        steps=steps,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        order=EpochOrder(seed, from_end=True),
    )
