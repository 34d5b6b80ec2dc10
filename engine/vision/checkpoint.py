"""Checkpoints of an image-generator run: one file per step, written atomically.

Layout under ``<run_dir>/checkpoints`` (see engine/stepfiles.py)::

    step_000500.pt     {"format", "kind", "step", "config", "state", "rng"}

    path = save_checkpoint(run_dir, step, payload, keep_last=2)
    path = latest_checkpoint(run_dir)          # None when the run has none
    payload = load_checkpoint(path_or_run_dir)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from engine.stepfiles import StepFiles, checkpoint_dir, latest_checkpoint, list_checkpoints
from engine.vision.data import VisionInputError

FORMAT = "engine.vision.checkpoint/1"

__all__ = [
    "CheckpointError",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]


class CheckpointError(VisionInputError):
    """A checkpoint that is missing, incomplete or not an image-generator checkpoint."""


_FILES = StepFiles(FORMAT, "an image-generator checkpoint", CheckpointError)


def save_checkpoint(
    run_dir: str | os.PathLike, step: int, payload: dict[str, Any], keep_last: int = 2
) -> Path:
    return _FILES.save(run_dir, step, payload, keep_last)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    return _FILES.resolve(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    return _FILES.load(path, map_location)
