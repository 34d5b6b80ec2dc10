"""Configs of the image generators: dataclasses with a reason per field, loaded from YAML.

    config = load_config("diffusion", "configs/vision/diffusion.yaml", ["train.steps=200"])
    config.model.base_channels, config.diffusion.schedule, config.train.batch_size ...

A YAML file mirrors the dataclasses: top-level ``run_dir``, ``seed`` and sections ``data``,
``model``, ``train`` (plus ``diffusion`` for the diffusion model). An unknown key, a value
of the wrong type or out of range raises :class:`ConfigError` naming the key, e.g.
``unknown key 'train.stesp' (did you mean 'train.steps'?)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from engine.configfile import build, check_ranges, read_config, setting
from engine.vision.data import ALLOWED_SIZES, VisionInputError

KINDS = ("diffusion", "gan", "vae")


class ConfigError(VisionInputError):
    """A configuration the user must fix; the message names the key."""


def _seed() -> Any:
    """The seed field of every image run config: one range for the three kinds."""
    return setting(0, minimum=0, maximum=2**31 - 1, help="weights init, data order, noise")


@dataclass
class EvaluationConfig:
    """The evaluation at the end of a run (engine.vision.evaluate): a trained classifier's
    accuracy on generated digits and the Frechet distance to the held-out ones."""

    per_class: int = setting(
        0, minimum=0, maximum=1000, help="samples per digit scored at the end (0: none)"
    )


def evaluation_config(per_class: int) -> EvaluationConfig:
    """The end-of-run evaluation's settings, checked like every config."""
    return build(EvaluationConfig, {"per_class": per_class}, ConfigError, "evaluation.")


@dataclass
class DataConfig:
    image_size: int = 8  # native; 16 or 32 upscale bilinearly (4x, 16x the compute)
    heldout_fraction: float = 0.2  # never trained on: the Frechet distance's reference
    split_seed: int = 0  # every model and the evaluator must share one split

    def validate(self) -> None:
        if self.image_size not in ALLOWED_SIZES:
            raise ConfigError(f"data.image_size must be one of {list(ALLOWED_SIZES)}")
        if not 0.05 <= self.heldout_fraction <= 0.5:
            raise ConfigError("data.heldout_fraction must be in [0.05, 0.5]")


@dataclass
class TrainConfig:
    # Optimizer steps (for the GAN: generator steps).
    steps: int = setting(4000, minimum=1, maximum=10_000_000, help="optimizer steps")
    batch_size: int = setting(128, minimum=1, maximum=4096, help="images per step")
    lr: float = setting(1e-3, minimum=1e-7, maximum=1.0, help="learning rate")
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    # Linear learning-rate warm-up (Adam's first updates are noisy); at most a tenth of a
    # shorter run (engine/loop/schedule.py).
    warmup_steps: int = 100
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off
    ema_decay: float = 0.999  # weights averaged for sampling (diffusion, GAN generator)
    log_interval: int = setting(50, minimum=1, maximum=100_000, help="metrics every N steps")
    checkpoint_interval: int = setting(
        1000, minimum=0, maximum=10_000_000, help="a checkpoint every N steps, and at the end"
    )
    sample_interval: int = setting(
        1000, minimum=0, maximum=10_000_000, help="a sample grid every N steps (0: at the end)"
    )
    keep_last: int = 2  # older checkpoints are deleted
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def validate(self) -> None:
        check_ranges(self, ConfigError, "train.")  # steps, batch_size, lr, the intervals
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be at least 1, got {self.keep_last}")
        for key in ("weight_decay", "warmup_steps", "grad_clip", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must not be negative, got {getattr(self, key)}")
        for key in ("beta1", "beta2", "ema_decay"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"train.{key} must be in [0, 1), got {getattr(self, key)}")


@dataclass
class UNetConfig:
    base_channels: int = 32  # channels at full resolution
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])  # one per resolution
    num_res_blocks: int = 1  # residual blocks per resolution on the way down
    attention: bool = True  # self-attention at the lowest resolution (cheap there)
    dropout: float = 0.0
    num_classes: int = 10  # plus one "no class" embedding for classifier-free guidance

    def validate(self) -> None:
        if self.base_channels < 8 or self.base_channels % 8:
            raise ConfigError("model.base_channels must be a multiple of 8 (GroupNorm groups)")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ConfigError("model.channel_mults must be a non-empty list of positive ints")
        if self.num_res_blocks < 1:
            raise ConfigError("model.num_res_blocks must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        if self.num_classes < 1:
            raise ConfigError("model.num_classes must be at least 1")


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T of the forward process (DDPM: 1000)
    schedule: Literal["linear", "cosine"] = "cosine"  # cosine: Nichol & Dhariwal 2021
    p_uncond: float = 0.1  # condition dropout: trains the unconditional model for CFG
    guidance_scale: float = 2.0  # default s in uncond + s * (cond - uncond)
    sample_steps: int = 50  # default DDIM steps for grids and evaluation

    def validate(self) -> None:
        if not 2 <= self.timesteps <= 10_000:
            raise ConfigError("diffusion.timesteps must be in [2, 10000]")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ConfigError("diffusion.p_uncond must be in [0, 1)")
        if not 0.0 <= self.guidance_scale <= 20.0:
            raise ConfigError("diffusion.guidance_scale must be in [0, 20]")
        if not 1 <= self.sample_steps <= self.timesteps:
            raise ConfigError("diffusion.sample_steps must be in [1, diffusion.timesteps]")


@dataclass
class GANConfig:
    z_dim: int = 64  # latent noise size
    g_channels: int = 64  # generator width at the 4x4 start (halved at each upsampling)
    d_channels: int = 32  # discriminator width at full resolution (doubled at each stride)
    spectral_norm: bool = True  # Miyato et al. 2018: bounds D's Lipschitz constant
    r1_gamma: float = 0.0  # R1 penalty on real images (Mescheder et al. 2018); 0 = off
    r1_interval: int = 4  # lazy R1: every N discriminator steps, scaled by N
    num_classes: int = 10

    def validate(self) -> None:
        for key in ("z_dim", "g_channels", "d_channels", "r1_interval", "num_classes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be at least 1")
        if self.r1_gamma < 0:
            raise ConfigError("model.r1_gamma must not be negative")


@dataclass
class VAEConfig:
    latent_dim: int = 16
    channels: int = 32  # encoder width at full resolution (doubled at each stride)
    kl_warmup_steps: int = 1000  # KL weight rises 0 -> 1 linearly (avoids posterior collapse)
    num_classes: int = 10  # a conditional VAE: the class enters encoder and decoder

    def validate(self) -> None:
        for key in ("latent_dim", "channels", "num_classes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be at least 1")
        if self.kl_warmup_steps < 0:
            raise ConfigError("model.kl_warmup_steps must not be negative")


@dataclass
class DiffusionRunConfig:
    run_dir: str = "var/runs/vision-diffusion"  # checkpoints, samples, metrics.jsonl
    seed: int = _seed()
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4))

    def validate(self) -> None:
        levels = len(self.model.channel_mults) - 1
        size = self.data.image_size
        if size % (2**levels) or size // 2**levels < 2:
            raise ConfigError(
                f"model.channel_mults has {levels + 1} resolutions: data.image_size {size} "
                f"cannot be halved {levels} times and stay at least 2x2"
            )


@dataclass
class GANRunConfig:
    run_dir: str = "var/runs/vision-gan"
    seed: int = _seed()
    data: DataConfig = field(default_factory=DataConfig)
    model: GANConfig = field(default_factory=GANConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=2e-4, beta1=0.0, beta2=0.99, grad_clip=0.0)
    )


@dataclass
class VAERunConfig:
    run_dir: str = "var/runs/vision-vae"
    seed: int = _seed()
    data: DataConfig = field(default_factory=DataConfig)
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Named starting points for a run: "recipe" is configs/vision/<kind>.yaml; "tiny" shrinks
# it to train in seconds on a CPU (tests, demos, a first look).
RECIPES = Path(__file__).resolve().parents[2] / "configs" / "vision"
TINY = {
    "diffusion": {
        "model": {"base_channels": 16, "channel_mults": [1, 2], "attention": True},
        "diffusion": {"timesteps": 100, "sample_steps": 20},
    },
    "gan": {"model": {"z_dim": 16, "g_channels": 32, "d_channels": 16}},
    "vae": {"model": {"latent_dim": 8, "channels": 16, "kl_warmup_steps": 50}},
}
PRESETS = ("recipe", "tiny")
DEFAULT_PRESET = "recipe"
PRESET_HELP = {"recipe": "configs/vision, minutes on a CPU", "tiny": "seconds: a first look"}


def preset_raw(kind: str, preset: str) -> dict[str, Any]:
    """The raw config (a YAML mapping) of a named preset, for ``config_from_dict``."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    raw = yaml.safe_load((RECIPES / f"{kind}.yaml").read_text(encoding="utf-8"))
    if preset == "tiny":
        for section, values in TINY[kind].items():
            raw.setdefault(section, {}).update(values)
    return raw


RUN_CONFIGS: dict[str, type] = {
    "diffusion": DiffusionRunConfig,
    "gan": GANRunConfig,
    "vae": VAERunConfig,
}
RunConfig = DiffusionRunConfig | GANRunConfig | VAERunConfig


def load_config(
    kind: str, path: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Read a YAML file (or start from defaults) and apply ``section.key=value`` overrides."""
    if kind not in RUN_CONFIGS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {list(KINDS)}")
    raw, source = read_config(path, overrides, ConfigError)
    return config_from_dict(kind, raw, source=source)


def config_from_dict(kind: str, raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return build(RUN_CONFIGS[kind], raw, ConfigError)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
