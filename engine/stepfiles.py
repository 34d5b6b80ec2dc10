"""Checkpoints kept as one file per step, written atomically: the image generators' and
the post-training runs' format (the pre-trainer has its own folder-per-step Checkpointer).

Layout under ``<run_dir>/checkpoints``::

    step_000500.pt        {"format", "step", ...payload}
    .step_000500.pt.tmp   only while being written; renamed when complete

    files = StepFiles("engine.vision.checkpoint/1", "an image-generator checkpoint", CheckpointError)
    path = files.save(run_dir, step, payload, keep_last=2)
    path = files.latest(run_dir)              # None when the run has none
    payload = files.load(path_or_run_dir)     # payload["path"] names the file read
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


class StepFiles:
    """Save, find and load step files of one ``format``; errors are ``error`` instances."""

    def __init__(self, format: str, description: str, error: type[Exception]):
        self.format = format
        self.description = description  # "an image-generator checkpoint", for messages
        self.error = error

    def save(
        self, run_dir: str | os.PathLike, step: int, payload: dict[str, Any], keep_last: int = 2
    ) -> Path:
        """Write ``payload`` as step_NNNNNN.pt (temp file, fsync, rename), then prune old ones."""
        folder = checkpoint_dir(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:06d}.pt"
        tmp = folder / f".{path.name}.tmp"
        with open(tmp, "wb") as handle:
            torch.save({"format": self.format, "step": step, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # readers see the whole file or none of it
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
        return path

    def resolve(self, path: str | os.PathLike) -> Path:
        """A checkpoint file, or a run folder (its latest checkpoint)."""
        path = Path(path)
        if path.is_dir():
            latest = latest_checkpoint(path)
            if latest is None and path.name == "checkpoints":
                latest = latest_checkpoint(path.parent)
            if latest is None:
                raise self.error(f"{path} holds no checkpoints (expected checkpoints/step_*.pt)")
            return latest
        if not path.is_file():
            raise self.error(f"checkpoint {path} does not exist")
        return path

    def load(self, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
        path = self.resolve(path)
        try:
            # Our own files hold plain containers, tensors and RNG byte tensors only.
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # torch raises several types for a truncated or foreign file
            raise self.error(f"{path} is not a readable checkpoint: {error}") from None
        if not isinstance(payload, dict) or payload.get("format") != self.format:
            raise self.error(f"{path} is not {self.description} ({self.format})")
        payload["path"] = str(path)
        return payload
