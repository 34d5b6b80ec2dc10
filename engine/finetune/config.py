"""Post-training run configs: one YAML shape for sft, lora, qlora, reward, dpo and ppo.

    config = load_config("dpo", "configs/finetune/dpo.yaml", ["train.steps=100"])

A YAML file mirrors :class:`FinetuneRunConfig`::

    run_dir: var/runs/dpo
    base: {path: var/runs/sft/model}        # checkpoint, export or run folder to start from
    data: {source: shakespeare, count: 2000}  # or {source: jsonl, path: pairs.jsonl}
    train: {steps: 200, batch_size: 8, lr: 1.0e-4}
    lora: {r: 8, alpha: 16}                  # used by lora/qlora, and by the others when
    use_lora: true                           # use_lora is true (adapters instead of all weights)
    dpo: {beta: 0.1}
    ppo: {kl_coef: 0.05, max_new_tokens: 32}

The kind is not in the file: it is the command (``python -m engine train dpo``), so one
file can serve several kinds. Errors name the key (engine/configfile.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.configfile import build, check_ranges, read_config, setting
from engine.finetune.lora import LoRAConfig
from engine.finetune.ppo import PPOConfig

KINDS = ("sft", "lora", "qlora", "reward", "dpo", "ppo")
# Which records each kind reads: SFT pairs, or preference pairs (ppo takes their prompts).
RECORD_KIND = {
    "sft": "sft",
    "lora": "sft",
    "qlora": "sft",
    "reward": "preference",
    "dpo": "preference",
    "ppo": "preference",
}
# Kinds that always train adapters; sft never does, the others do when use_lora is true.
ADAPTER_KINDS = ("lora", "qlora")
# Default learning rates (the job schemas of engine/jobparams.py copy them). Full fine-tuning
# moves every weight of a model that already writes well, so it takes small steps, and
# the preference methods the smallest: they must stay near their reference. Adapters
# start from B = 0 and hold ~1% of the weights, so they take ten times the step.
DEFAULT_LR = {"sft": 1e-4, "reward": 5e-5, "dpo": 1e-5, "ppo": 1e-5}
DEFAULT_LR_ADAPTERS = {"lora": 1e-3, "qlora": 1e-3, "reward": 5e-4, "dpo": 1e-4, "ppo": 1e-4}


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the key."""


@dataclass
class BaseModelConfig:
    path: str = ""  # checkpoint, export or run folder of the model to start from
    tokenizer: str = ""  # tokenizer.json, when the model folder has none
    reward_model: str = ""  # ppo: folder written by a reward run (reward_model.json)

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("base.path is empty; point it at a pre-trained model folder")


@dataclass
class DataConfig:
    source: Literal["shakespeare", "jsonl"] = "shakespeare"  # built-in pairs, or your file
    path: str = ""  # the .jsonl(.gz) file of pairs when source is jsonl
    # Built-in pairs to make (the plays give about 14,000; asking for more is an error).
    count: int = setting(2000, minimum=16, maximum=100_000, help="built-in pairs to make")
    # How the built-in pairs' rejected answers differ from the real continuation: its words
    # shuffled (a style a small model learns to tell in a hundred steps), another speech's
    # lines (it must know what follows what), or both, alternating.
    corruption: Literal["shuffle", "mismatch", "mixed"] = setting(
        "mixed", help="built-in pairs: rejected = the words shuffled, another speech's, or both"
    )
    heldout_fraction: float = 0.1  # never trained on: evaluation and PPO prompts
    pack: bool = True  # SFT: lay short examples end to end in a row (faster)

    def validate(self) -> None:
        if self.source == "jsonl" and not self.path:
            raise ConfigError("data.path is empty; name the .jsonl file of pairs")
        check_ranges(self, ConfigError, "data.")  # count
        if not 0.0 < self.heldout_fraction < 0.5:
            raise ConfigError("data.heldout_fraction must be in (0, 0.5)")


@dataclass
class TrainConfig:
    # Optimizer steps (PPO: rollout + update iterations).
    steps: int = setting(200, minimum=1, maximum=1_000_000, help="optimizer steps")
    batch_size: int = setting(8, minimum=1, maximum=1024, help="examples (pairs, rows) per step")
    # None: the kind's default (DEFAULT_LR, DEFAULT_LR_ADAPTERS).
    lr: float | None = setting(None, minimum=1e-7, maximum=1.0, help="learning rate")
    weight_decay: float = 0.0  # small data, few steps: no decay
    # Linear warm-up (at most a tenth of the run), then constant: few steps leave no room
    # to decay.
    warmup_steps: int = setting(10, minimum=0, maximum=1_000_000, help="linear warm-up steps")
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off
    log_interval: int = setting(10, minimum=1, maximum=100_000, help="metrics every N steps")
    eval_interval: int = setting(
        50, minimum=0, maximum=1_000_000, help="held-out evaluation every N steps (0: at the end)"
    )
    eval_at_start: bool = True  # evaluate the starting model too: the baseline of every curve
    eval_batches: int = 4  # held-out batches per evaluation
    checkpoint_interval: int = setting(
        0, minimum=0, maximum=1_000_000, help="a checkpoint every N steps (0: at the end)"
    )
    keep_last: int = 2  # older checkpoints are deleted
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # QLoRA's compute dtype too
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def validate(self) -> None:
        check_ranges(self, ConfigError, "train.")  # steps, batch_size, lr, the intervals
        for key in ("eval_batches", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("weight_decay", "grad_clip", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must not be negative, got {getattr(self, key)}")


@dataclass
class DPOSection:
    # Strength of the KL tie to the reference (Rafailov et al. 2023).
    beta: float = setting(
        0.1, exclusiveMinimum=0.0, maximum=10.0, help="strength of the tie to the reference"
    )
    # Conservative DPO: the share of labels assumed flipped.
    label_smoothing: float = setting(
        0.0, minimum=0.0, exclusiveMaximum=0.5, help="share of labels assumed flipped"
    )
    # Reference log-probs once, then no reference forward.
    precompute_reference: bool = setting(False, help="reference log-probs computed once")

    def validate(self) -> None:
        check_ranges(self, ConfigError, "dpo.")  # beta in (0, 10], label_smoothing in [0, 0.5)


@dataclass
class FinetuneRunConfig:
    kind: Literal["sft", "lora", "qlora", "reward", "dpo", "ppo"] = "sft"
    run_dir: str = "var/runs/finetune"  # checkpoints, metrics.jsonl, model/, adapter/
    seed: int = setting(1337, minimum=0, maximum=2**31 - 1, help="init, data order, sampling")
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    use_lora: bool | None = None  # None: adapters for lora/qlora, all weights otherwise
    # With adapters, the chat template's tokens (roles, end-of-text) train their embedding
    # rows too: pre-training never used them, and low-rank updates cannot reach them.
    train_chat_tokens: bool = True
    dpo: DPOSection = field(default_factory=DPOSection)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sample_prompts: list[str] = field(default_factory=list)  # generated at the end (samples.json)

    def validate(self) -> None:
        if self.kind in ADAPTER_KINDS and self.use_lora is False:
            raise ConfigError(f"use_lora: false contradicts the kind {self.kind}")
        if self.kind == "sft" and self.use_lora:
            raise ConfigError("use_lora: true with kind sft; use the lora kind instead")
        if self.kind == "ppo" and not self.base.reward_model:
            raise ConfigError("base.reward_model is empty; PPO needs a reward run's folder")

    @property
    def adapters(self) -> bool:
        return self.kind in ADAPTER_KINDS or bool(self.use_lora)

    @property
    def lr(self) -> float:
        if self.train.lr is not None:
            return self.train.lr
        return (DEFAULT_LR_ADAPTERS if self.adapters else DEFAULT_LR)[self.kind]

    @property
    def record_kind(self) -> str:
        return RECORD_KIND[self.kind]


def load_config(
    kind: str, path: str | Path | None = None, overrides: list[str] | None = None
) -> FinetuneRunConfig:
    """Read a YAML file (or defaults), apply ``section.key=value`` overrides, set the kind."""
    if kind not in KINDS:
        raise ConfigError(f"unknown post-training kind {kind!r}; choose one of {list(KINDS)}")
    raw, source = read_config(path, overrides, ConfigError)
    return config_from_dict(kind, raw, source=source)


def config_from_dict(kind: str, raw: dict[str, Any], source: str = "config") -> FinetuneRunConfig:
    if "kind" in raw and raw["kind"] != kind:
        raise ConfigError(f"{source}: kind is {raw['kind']!r} but the command is {kind!r}")
    try:
        return build(FinetuneRunConfig, {**raw, "kind": kind}, ConfigError)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def config_to_dict(config: FinetuneRunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
