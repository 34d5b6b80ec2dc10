"""A callback that records what a training loop announces and can ask it to stop.

Shared by the loop tests of tests/engine/train, vision and finetune: the three loops
speak one protocol (engine/loop/callbacks.py), so one recorder checks them all.
"""

from __future__ import annotations

from pathlib import Path

from engine.loop.callbacks import Callback


class Recorder(Callback):
    """Asks to stop once ``stop_at`` steps are logged (a cancelled job); None never stops."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.step = stop_at, 0
        self.checkpoints: list[tuple[int, Path]] = []
        self.artifacts: list[tuple[int, Path]] = []
        self.metrics: list[tuple[int, dict[str, float]]] = []

    def on_metrics(self, step, metrics):
        self.step = step
        self.metrics.append((step, metrics))

    def on_checkpoint(self, step, path, val_loss=None):
        assert Path(path).exists()  # complete when announced
        self.checkpoints.append((step, Path(path)))

    def on_artifact(self, step, path):
        self.artifacts.append((step, Path(path)))

    def should_stop(self):
        return self.stop_at is not None and self.step >= self.stop_at

    @property
    def checkpoint_steps(self) -> list[int]:
        return [step for step, _ in self.checkpoints]
