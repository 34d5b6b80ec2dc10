"""Training configuration: dataclasses with a reason per field, loaded from YAML with key checks.

    config = load_config("configs/shakespeare_char.yaml", overrides=["optim.lr=3e-4"])
    config.train.max_iters, config.model.n_layer, config.optim.lr ...

A YAML file mirrors the dataclasses (sections ``model``, ``data``, ``optim``, ``train``,
``checkpoint`` plus top-level ``run_dir`` and ``seed``). An unknown key, a value of the
wrong type or a value out of range raises :class:`ConfigError` naming the key, e.g.
``unknown key 'optim.lrr' (did you mean 'optim.lr'?)``. Overrides ``section.key=value``
(values parsed as YAML) go through the same checks (minGPT's rule: never ``exec``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.configfile import build, check_ranges, read_config, setting
from engine.models.gpt import GPTConfig


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the key."""


# Model sizes a user picks by name (nanoGPT's and GPT-2's shapes); a job starts from one
# and may override block_size and dropout.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    "shakespeare-char": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64},
    "small": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
    "gpt2-124m": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024},
}
DEFAULT_PRESET = "tiny"  # seconds on a CPU: what a job gets when it names none
PRESET_HELP = {
    "tiny": "seconds on a CPU",
    "shakespeare-char": "nanoGPT's CPU recipe",
    "small": "a GPU, or patience",
    "gpt2-124m": "GPU",
}


@dataclass
class DataConfig:
    path: str = ""  # folder of token shards with manifest.json (engine.data.shards format)
    order: Literal["random", "sequential"] = "random"  # random windows as nanoGPT, or a sweep
    verify_checksums: bool = False  # re-hash every shard before training (reads all the data)


@dataclass
class OptimConfig:
    lr: float = setting(6e-4, minimum=1e-7, maximum=1.0, help="peak learning rate, after warmup")
    # Floor of the cosine decay (Chinchilla: about lr / 10).
    min_lr: float = setting(6e-5, minimum=0.0, maximum=1.0, help="floor of the cosine decay")
    # On matrices and embeddings only, not biases or norms.
    weight_decay: float = setting(0.1, minimum=0.0, maximum=1.0, help="AdamW weight decay")
    beta1: float = 0.9
    beta2: float = 0.95  # 0.99 for tiny models with few tokens per step (nanoGPT char recipe)
    eps: float = 1e-8
    grad_clip: float = 1.0  # clip the global gradient norm; 0 turns clipping off
    # Linear warmup from 0 (stabilises Adam's early updates); at most a tenth of a shorter
    # run (engine/loop/schedule.py).
    warmup_iters: int = setting(100, minimum=0, maximum=10_000_000, help="linear warmup steps")
    lr_decay_iters: int | None = None  # cosine reaches min_lr here; defaults to train.max_iters
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class TrainConfig:
    max_iters: int = setting(5000, minimum=1, maximum=10_000_000, help="optimizer steps")
    batch_size: int = setting(12, minimum=1, maximum=4096, help="sequences per micro-step per rank")
    # Micro-steps per optimizer step (gradients summed, synced once).
    grad_accum: int = setting(1, minimum=1, maximum=1024, help="micro-steps per optimizer step")
    eval_interval: int = setting(
        250, minimum=0, maximum=10_000_000, help="evaluate every N steps (0: only at the end)"
    )
    eval_iters: int = setting(20, minimum=1, maximum=10_000, help="validation batches per eval")
    log_interval: int = setting(10, minimum=1, maximum=100_000, help="metrics every N steps")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = (
        "auto"  # auto: bf16 on GPU, fp32 on CPU
    )
    compile: bool = False  # torch.compile the model (worth it on GPU; slow to start)
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: DDP when launched by torchrun
    progress: bool = True  # progress bar on rank 0
    peak_flops: float | None = None  # device peak FLOP/s for MFU; known GPUs are looked up
    threads: int = 0  # torch CPU threads per process; 0 = torch's default


@dataclass
class CheckpointConfig:
    interval: int = setting(
        0, minimum=0, maximum=10_000_000, help="a checkpoint every N steps (0: only at the end)"
    )
    keep_last: int = 3  # older checkpoints are deleted, except the best one
    keep_best: bool = True  # keep the checkpoint with the lowest validation loss
    sharded: Literal["auto", "always", "never"] = (
        "auto"  # torch.distributed.checkpoint; auto = under FSDP
    )


@dataclass
class RunConfig:
    run_dir: str = "var/runs/default"  # checkpoints, metrics.jsonl, tokenizer copy
    seed: int = setting(1337, minimum=0, maximum=2**31 - 1, help="model init, data order, dropout")
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # Set when the YAML leaves model.vocab_size out: the trainer takes the data's vocabulary.
    vocab_from_data: bool = field(default=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        # The fields' own ranges (their metadata: the job schemas show the same), then the
        # rules no single field can state.
        check_ranges(self, ConfigError)
        for name in ("data", "optim", "train", "checkpoint"):
            check_ranges(getattr(self, name), ConfigError, f"{name}.")
        if self.checkpoint.keep_last < 1:
            raise ConfigError(
                f"checkpoint.keep_last must be at least 1, got {self.checkpoint.keep_last}"
            )
        if self.optim.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must not be negative, got {self.optim.grad_clip}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self.optim, key) < 1.0:
                raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(self.optim, key)}")
        if self.optim.min_lr > self.optim.lr:
            raise ConfigError(
                f"optim.min_lr ({self.optim.min_lr}) is above optim.lr ({self.optim.lr})"
            )

    @property
    def lr_decay_iters(self) -> int:
        return self.optim.lr_decay_iters or self.train.max_iters

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SamplesConfig:
    """What is generated from the trained model at the end (the run page's samples)."""

    prompts: list[str] = setting(
        default_factory=lambda: ["\n"],
        minItems=1,
        maxItems=8,
        minLength=1,
        maxLength=500,
        help="prompts to continue at the end",
    )
    tokens: int = setting(200, minimum=1, maximum=4000, help="tokens generated per prompt")
    temperature: float = 0.8
    top_k: int = 50
    seed: int = 1337  # the sampler's generator: the same model gives the same samples


def samples_config(prompts: list[str], tokens: int) -> SamplesConfig:
    """The end-of-run samples' settings, checked like every config (ranges, types)."""
    return build(SamplesConfig, {"prompts": prompts, "tokens": tokens}, ConfigError, "samples.")


def preset_model(preset: str) -> dict[str, Any]:
    """The model section of a named preset (a copy: callers override keys)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    return dict(PRESETS[preset])


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or start from defaults) and apply ``section.key=value`` overrides."""
    raw, source = read_config(path, overrides, ConfigError)
    return config_from_dict(raw, source=source)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    model = raw.get("model")
    try:
        config = build(RunConfig, raw, ConfigError)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    config.vocab_from_data = model is None or (
        isinstance(model, dict) and "vocab_size" not in model
    )
    return config
