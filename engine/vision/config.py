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

from engine.configfile import build, read_config
from engine.vision.data import ALLOWED_SIZES, VisionInputError

KINDS = ("diffusion", "gan", "vae")


class ConfigError(VisionInputError):
    """A configuration the user must fix; the message names the key."""


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
    steps: int = 4000  # optimizer steps (for the GAN: generator steps)
    batch_size: int = 128
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    warmup_steps: int = 100  # linear learning-rate warm-up: Adam's first updates are noisy
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off
    ema_decay: float = 0.999  # weights averaged for sampling (diffusion, GAN generator)
    log_interval: int = 50  # metrics to the callback every N steps
    checkpoint_interval: int = 1000  # and always at the end
    sample_interval: int = 1000  # a sample grid PNG every N steps (0: only at the end)
    keep_last: int = 2  # older checkpoints are deleted
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def validate(self) -> None:
        for key in ("steps", "batch_size", "log_interval", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("lr", "weight_decay", "warmup_steps", "grad_clip", "checkpoint_interval"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must not be negative, got {getattr(self, key)}")
        for key in ("sample_interval", "threads"):
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
    seed: int = 0
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
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: GANConfig = field(default_factory=GANConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=2e-4, beta1=0.0, beta2=0.99, grad_clip=0.0)
    )


@dataclass
class VAERunConfig:
    run_dir: str = "var/runs/vision-vae"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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
