"""Image-generation training jobs: diffusion, GAN and VAE on the 8x8 digits (engine.vision).

The engine trains from its own copy of scikit-learn's digits. The job's training callbacks
(workers/training.py) send the metrics to the platform and MLflow as they are logged, and
put every checkpoint (a single .pt file) and every sample grid (a PNG, one row per digit)
into the store as the loop writes it, so the run page shows the grids and a re-dispatched
attempt resumes from the last checkpoint.

Params (validated and filled in by the platform with the engine's schema,
engine/jobparams.py): preset ("recipe": configs/vision/<kind>.yaml, or "tiny" for a
seconds-long run: engine.vision.config.preset_raw), train overrides (steps, batch_size, lr, log_interval,
checkpoint_interval, sample_interval), eval_per_class, device, seed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from workers.launch import require_one_process
from workers.runtime import JobContext, JobFailed, verified_step_file


def run_config(kind: str, params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The engine's run config as a dict: the preset's, with what the job set on top (the
    platform filled in seed and device; train holds only what the user chose)."""
    from engine.vision.config import preset_raw

    raw = preset_raw(kind, params["preset"])
    raw["run_dir"] = str(run_dir)
    raw["seed"] = params["seed"]
    raw.setdefault("train", {}).update(params["train"])
    raw["train"]["device"] = params["device"]
    return raw


def run_image_training(ctx: JobContext) -> dict[str, Any]:
    from engine.vision.checkpoint import CheckpointError
    from engine.vision.config import ConfigError, config_from_dict, evaluation_config
    from engine.vision.train import TrainingError, train

    kind, params = str(ctx.spec.kind), ctx.spec.params
    require_one_process(kind, params)
    with tempfile.TemporaryDirectory(prefix=f"job-{ctx.spec.job_id}-") as tmp:
        run_dir = Path(tmp) / "run"
        try:
            config = config_from_dict(kind, run_config(kind, params, run_dir), source="job")
            evaluation = evaluation_config(params["eval_per_class"])
        except ConfigError as error:
            raise JobFailed(str(error)) from None
        resume = (
            ctx.download_resume_checkpoint(run_dir / "checkpoints", verified_step_file) or False
        )
        to_platform = ctx.training_callbacks()
        try:
            summary = train(
                config,
                resume=resume,
                callbacks=[to_platform],
                eval_per_class=evaluation.per_class,
            )
        except (TrainingError, CheckpointError) as error:
            raise JobFailed(str(error)) from None
        to_platform.end_if_stopped(summary.stopped)
        ctx.check_stop()  # the final evaluation may have taken a while
        ctx.tracker.log_text(str(summary.evaluation), "evaluation.txt")
        return {
            "kind": kind,
            "steps": summary.steps,
            "seconds": round(summary.seconds, 2),
            "metrics": summary.last_metrics,
            "evaluation": summary.evaluation,
        }
