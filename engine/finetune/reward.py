"""Reward model: a GPT backbone with a scalar head, trained on preference pairs.

    from engine.finetune.reward import RewardModel, reward_train, save_reward_model
    model = RewardModel.from_gpt(sft_model)              # a copy; the SFT model is untouched
    apply_lora(model.gpt, LoRAConfig())                  # optional: then adapters + head train
    history = reward_train(model, batches, steps=200, lr=1e-4)   # PairBatch list
    scores = model(batch.input_ids, batch.lengths)       # (2B,) one scalar per row
    save_reward_model(model, "out/reward", tokenizer_file="tok.json")
    model = load_reward_model("out/reward")

The head reads the backbone's final hidden state (``GPT.hidden_states``, what the language
head reads) at the last real token of each right-padded row, the end-of-text that closes
the response, which has seen the whole prompt and response (causal attention: padding
after it changes nothing). Trained with the Bradley-Terry model of pairwise preference
(Ouyang et al. 2022, eq. 1): ``P(chosen > rejected) = sigmoid(r_c - r_r)``, loss
``-log sigmoid(r_c - r_r)``.

Saved as ``reward_model.safetensors`` + ``reward_model.json`` (format tag, the GPTConfig;
written last, so a folder with the JSON is complete) and optionally ``tokenizer.json``.
A backbone carrying LoRA adapters is saved merged: the folder holds a plain GPT + head.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from engine.finetune.lora import LoRALinear, lora_modules, merge_and_unload
from engine.finetune.objective import BatchOrder, Objective, train_pairs
from engine.finetune.preference import PairBatch, preference_batches_for
from engine.models.gpt import GPT, GPTConfig

REWARD_FORMAT = "engine.reward-model/1"
WEIGHTS_NAME = "reward_model.safetensors"
CONFIG_NAME = "reward_model.json"
TOKENIZER_NAME = "tokenizer.json"


class RewardModel(nn.Module):
    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        n_embd = gpt.config.n_embd
        self.score = nn.Linear(n_embd, 1)
        # Small head so initial rewards are O(1) (std 1/sqrt(n_embd + 1), as in
        # OpenAI's lm-human-preferences reward head).
        nn.init.normal_(self.score.weight, std=1 / math.sqrt(n_embd + 1))
        nn.init.zeros_(self.score.bias)
        wte = gpt.transformer.wte.weight
        self.score.to(device=wte.device, dtype=wte.dtype)

    @classmethod
    def from_gpt(cls, gpt: GPT) -> RewardModel:
        """A reward model on a copy of ``gpt`` (pre-trained or SFT), every weight trainable."""
        backbone = copy.deepcopy(gpt)
        backbone.requires_grad_(True)
        return cls(backbone)

    @property
    def config(self) -> GPTConfig:
        return self.gpt.config

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) right-padded, lengths (B,) real tokens per row -> rewards (B,)."""
        B, T = input_ids.shape
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > T:
            raise ValueError(f"lengths must lie in [1, {T}], got {lengths.tolist()}")
        hidden = self.gpt.hidden_states(input_ids)  # (B, T, C)
        last = hidden[torch.arange(B, device=hidden.device), lengths.to(hidden.device) - 1]
        return self.score(last).squeeze(-1)  # (B,)


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean ``-log sigmoid(r_c - r_r)`` over B pairs, rewards (B,) each, and its metrics."""
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(
            f"bradley_terry_loss needs two (B,) tensors, got {tuple(r_chosen.shape)} "
            f"and {tuple(r_rejected.shape)}"
        )
    diff = r_chosen - r_rejected  # (B,)
    loss = -F.logsigmoid(diff).mean()
    metrics = {
        # A tie counts one half, as in dpo.ranking_accuracy.
        "reward/accuracy": ((torch.sign(diff.detach()) + 1) / 2).mean().item(),
        "reward/margin": diff.detach().mean().item(),
        "reward/chosen": r_chosen.detach().mean().item(),
        "reward/rejected": r_rejected.detach().mean().item(),
    }
    return loss, metrics


def pair_rewards(model: RewardModel, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) rewards of a batch, one forward over its 2B rows."""
    rewards = model(batch.input_ids, batch.lengths)
    chosen, rejected = rewards.chunk(2)
    return chosen, rejected


class RewardObjective(Objective):
    """Bradley-Terry on preference pairs, one batch a step (the reward kind)."""

    def __init__(
        self,
        model: RewardModel,
        batches: Sequence[PairBatch],
        eval_batches: Sequence[PairBatch] = (),
        *,
        device: torch.device | None = None,
    ):
        if not batches:
            raise ValueError("no preference batches to train on")
        self.module, self.batches, self.eval_batches = model, list(batches), list(eval_batches)
        self.device = device if device is not None else next(model.parameters()).device

    @classmethod
    def from_records(cls, model, template, train, heldout, config, device) -> RewardObjective:
        block = model.config.block_size
        batches = preference_batches_for(template, train, config, block, shuffle=True)
        held = preference_batches_for(template, heldout, config, block, shuffle=False)
        return cls(model, batches, held[: config.train.eval_batches], device=device)

    def loss(self, pick: BatchOrder) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.batches[pick(len(self.batches), 1)[0]].to(self.device)
        loss, metrics = bradley_terry_loss(*pair_rewards(self.module, batch))
        return loss, {"train/loss": loss.item(), **metrics}

    def evaluate(self) -> dict[str, float]:
        scores = evaluate_reward_model(self.module, self.eval_batches)
        return {f"eval/{key}": value for key, value in scores.items()}


def reward_train(
    model: RewardModel,
    batches: Sequence[PairBatch],
    *,
    steps: int,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The reward objective in its smallest loop: every step's ``reward/*`` metrics."""
    objective = RewardObjective(model, batches)
    history = train_pairs(
        objective, steps=steps, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed
    )
    return [
        {**{k: v for k, v in m.items() if k.startswith("reward/")}, "reward/loss": m["train/loss"]}
        for m in history
    ]


@torch.no_grad()
def evaluate_reward_model(model: RewardModel, batches: Sequence[PairBatch]) -> dict[str, float]:
    """Held-out Bradley-Terry loss, accuracy and margin over every pair of ``batches``."""
    if not batches:
        raise ValueError("no preference batches to evaluate")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        parts = [pair_rewards(model, batch.to(device)) for batch in batches]
    finally:
        model.train(was_training)
    chosen = torch.cat([c for c, _ in parts]).float()
    rejected = torch.cat([r for _, r in parts]).float()
    loss, metrics = bradley_terry_loss(chosen, rejected)
    return {
        "loss": loss.item(),
        "accuracy": metrics["reward/accuracy"],
        "margin": metrics["reward/margin"],
    }


def _merged_copy(model: RewardModel) -> RewardModel:
    """A copy whose backbone is a plain GPT: LoRA updates folded into the base weights."""
    return merge_and_unload(copy.deepcopy(model))


def save_reward_model(
    model: RewardModel, directory: str | Path, tokenizer_file: str | Path | None = None
) -> Path:
    """Write the weights, the tokenizer (if given), then the JSON manifest into ``directory``."""
    merged = _merged_copy(model) if lora_modules(model) else model
    with torch.device("meta"):
        plain = RewardModel(GPT(model.config))
    unknown = set(merged.state_dict()) ^ set(plain.state_dict())
    if unknown or any(isinstance(m, LoRALinear) for m in merged.modules()):
        raise ValueError(
            "the reward model's backbone is not a plain GPT (quantized layers? dequantize "
            f"first); unexpected weights: {sorted(unknown)[:6]}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{WEIGHTS_NAME}.tmp"
    # save_model (not save_file) stores the tied embedding / output head once.
    save_model(merged, str(tmp), metadata={"format": REWARD_FORMAT})
    os.replace(tmp, directory / WEIGHTS_NAME)
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, directory / TOKENIZER_NAME)
    manifest = {
        "format": REWARD_FORMAT,
        "model": model.config.to_dict(),
        "tokenizer": TOKENIZER_NAME if tokenizer_file is not None else None,
    }
    tmp = directory / f".{CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, directory / CONFIG_NAME)
    return directory


def load_reward_model(directory: str | Path, map_location: str = "cpu") -> RewardModel:
    """A reward model saved by :func:`save_reward_model` (its tokenizer: load_tokenizer(dir))."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no reward model at {directory} ({CONFIG_NAME} is missing)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != REWARD_FORMAT:
        raise ValueError(f"{path} is not a reward model ({REWARD_FORMAT})")
    model = RewardModel(GPT(GPTConfig(**manifest["model"])))
    load_model(model, str(directory / WEIGHTS_NAME), strict=True, device=map_location)
    model.eval()
    return model
