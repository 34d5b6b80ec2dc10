"""A run's checkpoints: where they live, how they are named, found, pruned, written atomically.

Two formats share one interface (:class:`CheckpointStore`), for two different needs:

- a *folder* per step (``engine.train.checkpoint.Checkpointer``): pre-training, where every
  rank of a torchrun job writes its own files (data-loader position, RNG) and FSDP writes
  sharded weights; the folder appears, renamed from a temporary one, once all are written;
- a *file* per step (:class:`StepFiles`, here): one process, one ``torch.save`` payload;
  the image generators and the post-training runs.

Both live under ``<run_dir>/checkpoints`` as ``step_NNNNNN`` (folder) or ``step_NNNNNN.pt``
(file); ``steps()``, ``path_for(step)``, ``latest()`` and ``prune()`` are the same for both.

    class VisionCheckpoints(StepFiles):
        format = "engine.vision.checkpoint/1"
        description = "an image-generator checkpoint"
        error = CheckpointError

    store = VisionCheckpoints(run_dir, keep_last=2)
    path = store.save(step, payload)             # step_000500.pt (temp file, fsync, rename)
    path = store.latest()                        # None when the run has none
    payload = VisionCheckpoints.load(path_or_run_dir)    # payload["path"] names the file read
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

import torch

CHECKPOINTS = "checkpoints"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the directory entry, not only the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """The checkpoints of one run: ``step_NNNNNN`` plus ``suffix`` under ``run_dir/checkpoints``.

    Subclasses say what a complete entry is and how to write and read one.
    """

    suffix: ClassVar[str] = ""

    def __init__(self, run_dir: str | os.PathLike, *, keep_last: int):
        self.dir = checkpoint_dir(run_dir)
        self.keep_last = keep_last

    @classmethod
    def step_of(cls, path: Path) -> int | None:
        """The step a checkpoint's name says, or None for anything else in the folder."""
        match = re.fullmatch(rf"step_(\d+){re.escape(cls.suffix)}", path.name)
        return int(match.group(1)) if match else None

    @classmethod
    def is_complete(cls, path: Path) -> bool:
        raise NotImplementedError

    @classmethod
    def steps_in(cls, folder: Path) -> list[tuple[int, Path]]:
        """(step, path) of the complete checkpoints in ``folder``, oldest first."""
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            step = cls.step_of(path)
            if step is not None and cls.is_complete(path):
                found.append((step, path))
        return sorted(found)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return [step for step, _ in self.steps_in(self.dir)]

    def path_for(self, step: int) -> Path:
        return self.dir / f"step_{step:06d}{self.suffix}"

    def latest(self) -> Path | None:
        found = self.steps_in(self.dir)
        return found[-1][1] if found else None

    def prune(self, keep: set[int] | None = None) -> None:
        """Remove all but the last ``keep_last`` checkpoints and the steps in ``keep``."""
        steps = self.steps()
        kept = set(steps[-self.keep_last :]) | (keep or set())
        for step in steps:
            if step not in kept:
                path = self.path_for(step)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


class StepFiles(CheckpointStore):
    """One ``torch.save`` file per step, tagged with ``format``; errors are ``error``'s."""

    suffix = ".pt"
    format: ClassVar[str]
    description: ClassVar[str]  # "an image-generator checkpoint", for messages
    error: ClassVar[type[Exception]]

    def __init__(self, run_dir: str | os.PathLike, *, keep_last: int = 2):
        super().__init__(run_dir, keep_last=keep_last)

    @classmethod
    def is_complete(cls, path: Path) -> bool:
        return path.is_file()  # written under a temporary name, so present means whole

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        """Write ``payload`` as step_NNNNNN.pt (temp file, fsync, rename), then prune old ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path_for(step)
        tmp = self.dir / f".{path.name}.tmp"
        with open(tmp, "wb") as handle:
            torch.save({"format": self.format, "step": step, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # readers see the whole file or none of it
        self.prune()
        return path

    @classmethod
    def resolve(cls, path: str | os.PathLike) -> Path:
        """A checkpoint file, or a run folder (its latest checkpoint)."""
        path = Path(path)
        if path.is_dir():
            found = cls.steps_in(checkpoint_dir(path))
            if not found and path.name == CHECKPOINTS:
                found = cls.steps_in(path)
            if not found:
                raise cls.error(f"{path} holds no checkpoints (expected checkpoints/step_*.pt)")
            return found[-1][1]
        if not path.is_file():
            raise cls.error(f"checkpoint {path} does not exist")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
        path = cls.resolve(path)
        try:
            # Our own files hold plain containers, tensors and RNG byte tensors only.
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # torch raises several types for a truncated or foreign file
            raise cls.error(f"{path} is not a readable checkpoint: {error}") from None
        if not isinstance(payload, dict) or payload.get("format") != cls.format:
            raise cls.error(f"{path} is not {cls.description} ({cls.format})")
        payload["path"] = str(path)
        return payload
