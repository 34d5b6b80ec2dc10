"""How a caller follows and steers a training run: one callback protocol for every loop.

    class ToTracker(Callback):
        def on_metrics(self, step, metrics):
            mlflow.log_metrics(metrics, step=step)

        def on_checkpoint(self, step, path, val_loss=None):
            upload(path)

        def should_stop(self):
            return cancel_requested()

    Trainer(config, callbacks=[ToTracker()]).fit()
    vision.train.train(config, callbacks=[ToTracker()])
    finetune.run.run(config, callbacks=[ToTracker()])

Every hook is optional. The loops call them at the same moments:

- ``on_train_start(info)`` once, before the first step (run facts: start step, total steps);
- ``on_metrics(step, metrics)`` every ``log_interval`` steps and after each evaluation;
- ``on_checkpoint(step, path, val_loss)`` when a complete checkpoint exists at ``path``
  (a folder for pre-training, a file for the others; ``val_loss`` None when not evaluated);
- ``on_artifact(step, path)`` for any other file the run wrote (the image grids);
- ``should_stop()`` after every optimizer step: True ends the run there, after a checkpoint
  of that step (so it resumes exactly), without the end-of-run work; the summary says
  ``stopped``;
- ``on_train_end(summary)`` once, with the final figures.

Under torchrun only rank 0 calls them; its ``should_stop`` answer reaches every rank, and
is asked on logging and checkpoint steps only there (they synchronise the ranks anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Callback:
    """Override what you need; every hook is optional."""

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Run facts: the start step (after a resume), the total steps, the loop's own."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Averaged training figures, or an evaluation's."""

    def on_checkpoint(self, step: int, path: Path, val_loss: float | None = None) -> None:
        """A complete checkpoint of ``step`` exists at ``path``."""

    def on_artifact(self, step: int, path: Path) -> None:
        """The run wrote ``path`` (not a checkpoint), e.g. a grid of samples."""

    def should_stop(self) -> bool:
        """True: end the run after this step (checkpointed), e.g. a cancelled job."""
        return False

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """Final step and figures."""


class CallbackList:
    """Calls every callback in order; what a loop holds instead of a list it loops over."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def append(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def train_start(self, info: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_train_start(info)

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_metrics(step, metrics)

    def checkpoint(self, step: int, path: Path, val_loss: float | None = None) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(step, path, val_loss)

    def artifact(self, step: int, path: Path) -> None:
        for callback in self.callbacks:
            callback.on_artifact(step, path)

    def should_stop(self) -> bool:
        # Every callback is asked (none is skipped because an earlier one said yes).
        return any([callback.should_stop() for callback in self.callbacks])

    def train_end(self, summary: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_train_end(summary)
