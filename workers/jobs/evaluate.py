"""The evaluation job: the figures of one registered model version (engine.evaluate).

The platform (controlplane/jobs/kinds.py) lists the inputs with their local names in
``params["input_names"]``:

    model/config.json, model/model.safetensors, model/tokenizer.json   (text models)
    model/<checkpoint>.pt                                              (image models)
    eval/manifest.json, eval/tokenizer.json, eval/val_*.bin     (the held-out tokens)
    train/manifest.json, train/train_*.bin      (the training text, for memorisation)

and ``params["task"]`` says which evaluation runs (text-generation, image-generation).
Every engine setting is in the params (filled from the engine's schema); the worker
builds the EvalConfig from them with no defaults of its own. A cancel is looked for
before each phase; nothing is published (the result travels in the finished event).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from workers.config import data_dir
from workers.jobs.finetune import download_inputs
from workers.runtime import JobContext, JobFailed


def eval_settings(params: dict[str, Any]):
    """The engine's EvalConfig from the job's params (every field is one, by name)."""
    from engine.evaluate import EvalConfig, EvalError, eval_config

    names = [spec.name for spec in dataclasses.fields(EvalConfig)]
    missing = [name for name in names if name not in params]
    if missing:
        raise JobFailed(f"the job's params lack {', '.join(missing)}; create the job again")
    try:
        return eval_config({name: params[name] for name in names})
    except EvalError as error:
        raise JobFailed(str(error)) from None


def _checkpoint(folder: Path) -> Path:
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise JobFailed("the model version holds no image-model checkpoint (.pt)")
    return files[-1]


def run_evaluate(ctx: JobContext) -> dict[str, Any]:
    from engine.evaluate import EvalError, evaluate_images, evaluate_text

    params = ctx.spec.params
    config = eval_settings(params)

    def phase(name: str, fraction: float) -> None:
        ctx.check_stop()
        ctx.progress(0.1 + 0.9 * fraction, name)

    with tempfile.TemporaryDirectory(prefix=f"job-{ctx.spec.job_id}-") as tmp:
        work = Path(tmp)
        ctx.progress(0.0, "downloading the model and the data")
        download_inputs(ctx, work)
        try:
            if params["task"] == "image-generation":
                cache = data_dir() / "cache" / "digit-classifier.pt"
                result = evaluate_images(
                    _checkpoint(work / "model"), config, classifier_cache=cache, on_phase=phase
                )
            else:
                train = work / "train"
                result = evaluate_text(
                    work / "model",
                    work / "eval",
                    train if (train / "manifest.json").is_file() else None,
                    config,
                    on_phase=phase,
                )
        except EvalError as error:
            raise JobFailed(str(error)) from None
        ctx.check_stop()
    # The figures as the job's metrics too: its page charts them, MLflow records them.
    ctx.metric(0, **result.metrics)
    if "samples" in result.details:
        ctx.tracker.log_text(json.dumps(result.details["samples"], indent=1), "samples.json")
    details = {
        **result.details,
        "model_version_id": params.get("model_version_id"),
        "dataset_version_id": params.get("dataset_version_id"),
        "training_dataset_version_id": params.get("training_dataset_version_id"),
    }
    return {"metrics": result.metrics, "details": details}
