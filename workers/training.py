"""How a job follows an engine training loop: one callback for the three loops.

    callbacks = ctx.training_callbacks()
    summary = Trainer(config, callbacks=[callbacks]).fit()   # or vision train(), finetune run()
    callbacks.end_if_stopped(summary.stopped)                # a cancel: no outputs, no finished

What each hook of the engine's protocol (engine/loop/callbacks.py) does for a job:
- ``on_train_start``: learns the run's total steps (progress is ``step / total``);
- ``on_metrics``: a metric event (and MLflow) and a progress event;
- ``on_checkpoint``: the checkpoint into the store under ``checkpoints/`` (a folder is packed
  into ``step_NNNNNN.tar``, a file keeps its ``step_NNNNNN.pt`` name: the resume fallback
  reads the step from that name) and a checkpoint event;
- ``on_artifact``: the file (a sample grid) under ``<its folder>/<its name>``, an artifact event;
- ``should_stop``: the job's cancel or superseded marker (``ctx.should_stop()``, throttled).

Stopping: once ``should_stop`` said yes the loop writes a checkpoint of that step and
returns. For a cancel that checkpoint is uploaded whole and reported (the work up to the
cancel stays listed on the job's page); for a superseded attempt it is not (the newer
attempt owns the job). Nothing else is published after the stop: later grids are skipped,
and the handler ends the attempt with ``end_if_stopped`` before its end-of-run work.
A cancel that arrives during any other upload ends it at once (``JobStopped``).
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.loop.callbacks import Callback
from workers.storage import StoredObject

if TYPE_CHECKING:  # runtime.py builds this class; importing it here would be a cycle
    from workers.runtime import JobContext

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # the checkpoints' folder under the attempt's output prefix


class TrainingCallbacks(Callback):
    """A job's side of an engine training loop; built by ``JobContext.training_callbacks``."""

    def __init__(self, ctx: JobContext, *, progress_until: float = 0.99):
        self.ctx = ctx
        self.progress_until = progress_until  # what the end-of-run work after the loop keeps
        self.total_steps = 0
        self.stopped = False  # should_stop said yes: the next checkpoint is the stop's

    def on_train_start(self, info: dict[str, Any]) -> None:
        self.total_steps = int(info["total_steps"])

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.ctx.metric(step, **metrics)
        done = min(step / max(self.total_steps, 1), 1.0)
        self.ctx.progress(self.progress_until * done, f"step {step} of {self.total_steps}")

    def should_stop(self) -> bool:
        self.stopped = self.stopped or self.ctx.should_stop()
        return self.stopped

    def on_checkpoint(self, step: int, path: Path, val_loss: float | None = None) -> None:
        at_stop = self.stopped
        if at_stop and self.ctx.stop_reason() != "cancelled":
            log.info("job %s: superseded, checkpoint %s kept local", self.ctx.spec.job_id, step)
            return
        if path.is_dir():  # pre-training's folder, packed next to it for the upload
            with tempfile.TemporaryDirectory(prefix=".upload-", dir=path.parent) as scratch:
                stored = self._upload(_packed(path, Path(scratch)), at_stop)
        else:
            stored = self._upload(path, at_stop)
        self.ctx.checkpoint(
            step=step,
            key=stored.key,
            sha256=stored.sha256,
            size=stored.size,
            even_if_stopped=at_stop,
        )

    def on_artifact(self, step: int, path: Path) -> None:
        if self.stopped:
            return  # nothing but the stop's checkpoint is published after a stop
        self.ctx.publish(path, f"{path.parent.name}/{path.name}")  # samples/step_000500.png

    def _upload(self, checkpoint: Path, at_stop: bool) -> StoredObject:
        return self.ctx.upload(checkpoint, CHECKPOINTS, checkpoint.name, even_if_stopped=at_stop)

    def end_if_stopped(self, stopped: bool) -> None:
        """End the attempt (``JobStopped``) when the loop returned because it was told to stop."""
        if not stopped:
            return
        self.ctx.check_stop()  # raises JobStopped: should_stop said yes, so the reason is known
        raise RuntimeError("the training loop stopped, but no cancel or newer attempt is known")


def _packed(checkpoint: Path, scratch: Path) -> Path:
    """A checkpoint folder as one ``<name>.tar`` (one object, one sha256, one download)."""
    archive = scratch / f"{checkpoint.name}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(checkpoint, arcname=checkpoint.name)
    return archive
