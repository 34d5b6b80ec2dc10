"""Direct Preference Optimization (DPO, Rafailov et al. 2023) on chosen/rejected pairs.

    from engine.finetune.dpo import dpo_train, evaluate_preferences
    from engine.finetune.preference import preference_batches
    batches = preference_batches(template, records, batch_size=8, block_size=256)
    reference = copy.deepcopy(policy).requires_grad_(False)    # or None under LoRA
    history = dpo_train(policy, reference, batches, steps=200, beta=0.1, lr=1e-5)
    print(evaluate_preferences(policy, reference, heldout_batches, beta=0.1))

The loss (eq. 7) compares how much more the policy likes the chosen response y_c than
the rejected y_r, relative to a frozen reference model::

    h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))
    loss = -log sigmoid(beta * h)

``beta * (log pi - log ref)`` is the *implicit reward* of a response (eq. 5); the policy
ranks a pair correctly when the chosen response's implicit reward is the higher one.
With label smoothing eps (conservative DPO: the labels are assumed flipped with
probability eps) the loss is ``(1 - eps) * -log sigmoid(beta h) + eps * -log sigmoid(-beta h)``.

The reference is either a separate frozen model or, with ``reference=None``, the policy
itself with its LoRA adapters switched off (the base it started from, at no extra
memory). It always runs under ``torch.no_grad`` in eval mode. Reference log-probs can also
be computed once over the dataset (:func:`precompute_reference_logps`); the training
steps then run no reference forward at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.finetune.lora import lora_modules, set_adapters_enabled
from engine.finetune.objective import BatchOrder, Objective, train_pairs
from engine.finetune.preference import PairBatch, preference_batches_for, sequence_logps


def ranking_accuracy(higher: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Fraction of rows where ``higher > lower``; a tie counts one half (no preference = chance).

    At step 0 the policy equals the reference and every implicit reward is exactly 0: the
    model has no opinion yet, which is a coin flip, not a wrong answer.
    """
    return ((torch.sign(higher - lower) + 1) / 2).float().mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss over B pairs from summed response log-probs, each (B,), and its metrics."""
    if beta <= 0:
        raise ValueError(f"dpo beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo label_smoothing must be in [0, 0.5), got {label_smoothing}")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"dpo_loss needs four (B,) tensors of one shape, got {sorted(shapes)}")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h)
    if label_smoothing:
        losses = losses - label_smoothing * F.logsigmoid(-beta * h)
    rewards_chosen = beta * (policy_chosen - ref_chosen).detach()  # implicit reward, eq. 5
    rewards_rejected = beta * (policy_rejected - ref_rejected).detach()
    metrics = {
        "dpo/rewards_chosen": rewards_chosen.mean().item(),
        "dpo/rewards_rejected": rewards_rejected.mean().item(),
        "dpo/margin": (rewards_chosen - rewards_rejected).mean().item(),
        "dpo/accuracy": ranking_accuracy(rewards_chosen, rewards_rejected).item(),
        "dpo/logps_chosen": policy_chosen.detach().mean().item(),
        "dpo/logps_rejected": policy_rejected.detach().mean().item(),
    }
    return losses.mean(), metrics


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off for a forward, then the module's own mode back."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _adapters_disabled(model: nn.Module) -> Iterator[None]:
    set_adapters_enabled(model, False)
    try:
        yield
    finally:
        set_adapters_enabled(model, True)


@torch.no_grad()
def reference_logps(
    policy: nn.Module, reference: nn.Module | None, batch: PairBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs (chosen (B,), rejected (B,)) of a batch, without gradients.

    ``reference=None`` runs the policy with its LoRA adapters switched off; a policy
    without adapters then needs an explicit reference (a frozen copy of its start).
    """
    if reference is None:
        if not lora_modules(policy):
            raise ValueError(
                "reference=None means the policy's adapter-free base, but the policy has no "
                "LoRA adapters; pass a frozen copy of the starting model as the reference"
            )
        with _eval_mode(policy), _adapters_disabled(policy):
            logps = sequence_logps(policy, batch.input_ids, batch.loss_mask)
    else:
        with _eval_mode(reference):
            logps = sequence_logps(reference, batch.input_ids, batch.loss_mask)
    chosen, rejected = logps.chunk(2)
    return chosen, rejected


def precompute_reference_logps(
    policy: nn.Module, reference: nn.Module | None, batches: Sequence[PairBatch]
) -> list[PairBatch]:
    """The same batches with ``reference_logps`` filled in, so training runs no reference.

    Call it before the first training step (the reference must be the starting model).
    """
    return [replace(b, reference_logps=reference_logps(policy, reference, b)) for b in batches]


def dpo_batch_loss(
    policy: nn.Module,
    reference: nn.Module | None,
    batch: PairBatch,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss of one batch: one policy forward over its 2B rows, the reference as needed."""
    if batch.reference_logps is not None:
        ref_chosen, ref_rejected = batch.reference_logps
    else:
        ref_chosen, ref_rejected = reference_logps(policy, reference, batch)
    policy_chosen, policy_rejected = sequence_logps(policy, batch.input_ids, batch.loss_mask).chunk(
        2
    )
    loss, metrics = dpo_loss(
        policy_chosen,
        policy_rejected,
        ref_chosen,
        ref_rejected,
        beta=beta,
        label_smoothing=label_smoothing,
    )
    metrics["dpo/loss"] = loss.item()
    return loss, metrics


class DPOObjective(Objective):
    """DPO on preference pairs against a frozen reference (None: the adapter-free base)."""

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module | None,
        batches: Sequence[PairBatch],
        eval_batches: Sequence[PairBatch] = (),
        *,
        beta: float,
        label_smoothing: float = 0.0,
        device: torch.device | None = None,
    ):
        if not batches:
            raise ValueError("no preference batches to train on")
        self.module, self.reference, self.batches = policy, reference, list(batches)
        self.beta, self.label_smoothing = beta, label_smoothing
        self.device = device if device is not None else next(policy.parameters()).device
        # The held-out reference log-probs never change: compute them once.
        held = [b.to(self.device) for b in eval_batches]
        self.eval_batches = precompute_reference_logps(policy, reference, held)

    @classmethod
    def from_records(
        cls, policy, reference, template, train, heldout, config, device
    ) -> DPOObjective:
        block = policy.config.block_size
        batches = preference_batches_for(template, train, config, block, shuffle=True)
        held = preference_batches_for(template, heldout, config, block, shuffle=False)
        return cls(
            policy,
            reference,
            batches,
            held[: config.train.eval_batches],
            beta=config.dpo.beta,
            label_smoothing=config.dpo.label_smoothing,
            device=device,
        )

    def precompute(self) -> None:
        """Reference log-probs of every training batch, before the first step only."""
        batches = [b.to(self.device) for b in self.batches]
        self.batches = precompute_reference_logps(self.module, self.reference, batches)

    def loss(self, pick: BatchOrder) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.batches[pick(len(self.batches), 1)[0]].to(self.device)
        loss, metrics = dpo_batch_loss(
            self.module,
            self.reference,
            batch,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        metrics.pop("dpo/loss", None)  # the same number as train/loss
        return loss, {"train/loss": loss.item(), **metrics}

    def evaluate(self) -> dict[str, float]:
        scores = evaluate_preferences(self.module, self.reference, self.eval_batches, self.beta)
        return {f"eval/{key}": value for key, value in scores.items()}


def dpo_train(
    policy: nn.Module,
    reference: nn.Module | None,
    batches: Sequence[PairBatch],
    *,
    steps: int,
    beta: float = 0.1,
    lr: float = 1e-5,
    label_smoothing: float = 0.0,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The DPO objective in its smallest loop: every step's ``dpo/*`` metrics.

    Batches are visited in a fresh random order each epoch. The full run (checkpoints,
    live metrics, outputs) is ``engine.finetune.run``.
    """
    params = {id(p) for p in policy.parameters() if p.requires_grad}
    if reference is not None and {id(p) for p in reference.parameters()} & params:
        # The reference would move with the policy and the loss would stay at log 2.
        raise ValueError(
            "the reference model shares trainable parameters with the policy; pass a "
            "frozen copy (copy.deepcopy(policy).requires_grad_(False)) or None under LoRA"
        )
    objective = DPOObjective(policy, reference, batches, beta=beta, label_smoothing=label_smoothing)
    history = train_pairs(
        objective, steps=steps, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed
    )
    return [_dpo_names(metrics) for metrics in history]


def _dpo_names(metrics: dict[str, float]) -> dict[str, float]:
    """The run's metric names back in the standalone loop's (``dpo/loss``, ``dpo/grad_norm``)."""
    named = {k: v for k, v in metrics.items() if k.startswith("dpo/")}
    named["dpo/loss"] = metrics["train/loss"]
    if "train/grad_norm" in metrics:
        named["dpo/grad_norm"] = metrics["train/grad_norm"]
    return named


@torch.no_grad()
def evaluate_preferences(
    policy: nn.Module,
    reference: nn.Module | None,
    batches: Sequence[PairBatch],
    beta: float,
) -> dict[str, float]:
    """Held-out preference figures, averaged over every pair of ``batches``.

    - ``accuracy``: the implicit reward ranks chosen above rejected (ties count half);
    - ``margin``: mean implicit reward margin ``beta * h``;
    - ``logp_margin``: the policy's own log-likelihood margin, log pi(y_c) - log pi(y_r);
    - ``logp_accuracy``: fraction of pairs where the policy itself finds chosen likelier;
    - ``loss``: the DPO loss (no label smoothing).
    """
    if not batches:
        raise ValueError("no preference batches to evaluate")
    device = next(policy.parameters()).device
    parts: list[tuple[torch.Tensor, ...]] = []
    with _eval_mode(policy):
        for batch in batches:
            batch = batch.to(device)
            if batch.reference_logps is not None:
                ref_chosen, ref_rejected = batch.reference_logps
            else:
                ref_chosen, ref_rejected = reference_logps(policy, reference, batch)
            chosen, rejected = sequence_logps(policy, batch.input_ids, batch.loss_mask).chunk(2)
            parts.append((chosen, rejected, ref_chosen, ref_rejected))
    chosen, rejected, ref_chosen, ref_rejected = (
        torch.cat(p).float() for p in zip(*parts, strict=True)
    )
    rewards_chosen, rewards_rejected = (
        beta * (chosen - ref_chosen),
        beta * (rejected - ref_rejected),
    )
    loss, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
    return {
        "accuracy": ranking_accuracy(rewards_chosen, rewards_rejected).item(),
        "margin": (rewards_chosen - rewards_rejected).mean().item(),
        "logp_margin": (chosen - rejected).mean().item(),
        "logp_accuracy": ranking_accuracy(chosen, rejected).item(),
        "loss": loss.item(),
        "pairs": float(chosen.numel()),
    }
