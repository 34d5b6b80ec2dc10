"""Helpers shared by the trainer tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from pathlib import Path


def tiny_config_dict(data_path: Path, run_dir: Path, **sections) -> dict:
    """A 2-layer, 32-wide GPT trained for a few steps; ``sections`` update the defaults."""
    raw = {
        "run_dir": str(run_dir),
        "seed": 7,
        "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0},
        "data": {"path": str(data_path)},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 2, "beta2": 0.99},
        "train": {
            "max_iters": 8,
            "batch_size": 4,
            "eval_interval": 4,
            "eval_iters": 2,
            "log_interval": 1,
            "device": "cpu",
            "progress": False,
            "threads": 1,
        },
        "checkpoint": {"interval": 4, "keep_last": 5},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw
