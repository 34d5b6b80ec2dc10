"""Helpers shared by the vision tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.vision.config import RunConfig, config_from_dict

TINY_MODELS = {
    "diffusion": {"base_channels": 16, "channel_mults": [1, 2], "attention": True},
    "gan": {"z_dim": 16, "g_channels": 32, "d_channels": 16},
    "vae": {"latent_dim": 8, "channels": 16, "kl_warmup_steps": 10},
}


def tiny_config_dict(kind: str, run_dir: Path, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": 3,
        "data": {"image_size": 8},
        "model": dict(TINY_MODELS[kind]),
        "train": {
            "steps": 4,
            "batch_size": 16,
            "lr": 2e-3,
            "warmup_steps": 0,
            "log_interval": 1,
            "checkpoint_interval": 2,
            "sample_interval": 0,
            "keep_last": 5,
            "device": "cpu",
        },
    }
    if kind == "diffusion":
        raw["diffusion"] = {"timesteps": 50, "sample_steps": 5}
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def tiny_config(kind: str, run_dir: Path, **sections: Any) -> RunConfig:
    return config_from_dict(kind, tiny_config_dict(kind, run_dir, **sections))
