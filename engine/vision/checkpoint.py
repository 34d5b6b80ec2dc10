"""Checkpoints of an image-generator run: one file per step, written atomically.

Layout under ``<run_dir>/checkpoints`` (see engine/loop/checkpoints.py)::

    step_000500.pt     {"format", "kind", "step", "config", "state", "rng"}

    path = VisionCheckpoints(run_dir, keep_last=2).save(step, payload)
    path = VisionCheckpoints(run_dir).latest()     # None when the run has none
    payload = load_checkpoint(path_or_run_dir)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.loop.checkpoints import StepFiles
from engine.vision.data import VisionInputError

FORMAT = "engine.vision.checkpoint/1"


class CheckpointError(VisionInputError):
    """A checkpoint that is missing, incomplete or not an image-generator checkpoint."""


class VisionCheckpoints(StepFiles):
    format = FORMAT
    description = "an image-generator checkpoint"
    error = CheckpointError


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    return VisionCheckpoints.resolve(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    return VisionCheckpoints.load(path, map_location)
