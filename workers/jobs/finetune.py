"""Post-training jobs: sft, lora, qlora, reward, dpo and ppo on a model an earlier job made.

The worker downloads the inputs the platform listed (``params["input_names"]``: the base
model under ``base/``, a reward model under ``reward/`` for PPO, pairs under ``data/``),
builds the engine's run config from the job's parameters and runs engine.finetune. The
job's training callbacks (workers/training.py) send the metrics to the platform (and
MLflow) as they are logged and put every checkpoint (one .pt file) into the store and
report it, so a re-dispatched attempt resumes from the last one. At the
end the outputs are published as artifacts that chain into the next job:
``model/config.json``, ``model/model.safetensors``, ``model/tokenizer.json`` (policies),
``adapter/*`` (LoRA runs), ``reward/*`` (reward models), and the samples.

Params (validated and filled in by the platform, controlplane/jobs/posttrain.py, with the
engine's schema, engine/jobparams.py): base_job_id,
reward_job_id (ppo), dataset_version_id or pairs_count (and pairs_corruption: reward,
dpo), train {steps, batch_size, lr,
warmup_steps, log_interval, eval_interval, checkpoint_interval}, lora {r, alpha, dropout,
target_modules}, dpo {beta, label_smoothing, precompute_reference}, ppo
{rollout_batch_size, max_new_tokens, kl_coef, ppo_epochs, clip_range, temperature},
seed, device, input_names.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workers.launch import require_one_process
from workers.runtime import JobContext, JobFailed, verified_step_file

PPO_MINIBATCH = 8  # rollouts per PPO optimizer step, at most


def download_inputs(ctx: JobContext, work: Path) -> None:
    """Each input to ``work/<its name>``; names are relative paths the platform chose."""
    names = ctx.spec.params.get("input_names") or []
    if len(names) != len(ctx.spec.inputs):
        raise JobFailed(f"{len(ctx.spec.inputs)} inputs but {len(names)} input names")
    for ref, name in zip(ctx.spec.inputs, names, strict=True):
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or len(relative.parts) != 2:
            raise JobFailed(f"input name {name!r} must look like base/<file>")
        ctx.download(ref.uri, work / relative, ref.sha256)
        ctx.check_stop()


def combined_pairs(folder: Path) -> Path | None:
    """One .jsonl of every downloaded pairs file (gzip ones decompressed), or None."""
    files = sorted(p for p in folder.glob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        return None
    if len(files) == 1 and files[0].suffix == ".jsonl":
        return files[0]
    target = folder.parent / "pairs.jsonl"
    with open(target, "wb") as out:
        for path in files:
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rb") as handle:
                shutil.copyfileobj(handle, out)
            out.write(b"\n")  # a file without a final newline must not glue two records
    return target


def run_config(kind: str, params: dict[str, Any], work: Path) -> dict[str, Any]:
    """The engine's FinetuneRunConfig as a dict, from the params the platform filled in
    (every setting is there: defaults come from the engine's schema, never from here)."""
    from engine.finetune.config import ADAPTER_KINDS

    raw: dict[str, Any] = {
        "run_dir": str(work / "run"),
        "seed": params["seed"],
        "base": {"path": str(work / "base")},
        "train": {**params["train"], "device": params["device"]},
    }
    pairs = combined_pairs(work / "data")
    if pairs is not None:
        raw["data"] = {"source": "jsonl", "path": str(pairs)}
    else:
        raw["data"] = {"source": "shakespeare", "count": params["pairs_count"]}
        if "pairs_corruption" in params:
            raw["data"]["corruption"] = params["pairs_corruption"]
    if "lora" in params:  # always for lora/qlora; for the others, adapters instead of weights
        raw["lora"] = dict(params["lora"])
        if kind not in ADAPTER_KINDS:
            raw["use_lora"] = True
    if kind == "dpo":
        raw["dpo"] = dict(params["dpo"])
    if kind == "ppo":
        raw["base"]["reward_model"] = str(work / "reward")
        ppo = dict(params["ppo"])
        # Not job settings: the minibatch must divide the rollouts, and the sampler's
        # seed follows the job's.
        ppo["minibatch_size"] = math.gcd(ppo["rollout_batch_size"], PPO_MINIBATCH)
        ppo["seed"] = params["seed"]
        raw["ppo"] = ppo
    return raw


def _publish_folder(ctx: JobContext, folder: Path, prefix: str) -> list[dict[str, Any]]:
    published = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ctx.check_stop()  # a cancel during publishing: stop before the next file
        published.append(ctx.publish(path, f"{prefix}/{path.name}"))
    return published


def run_finetune(ctx: JobContext) -> dict[str, Any]:
    from engine.finetune.config import ConfigError, config_from_dict
    from engine.finetune.run import FinetuneError, run

    kind, params = str(ctx.spec.kind), ctx.spec.params
    require_one_process(kind, params)
    with tempfile.TemporaryDirectory(prefix=f"job-{ctx.spec.job_id}-") as tmp:
        work = Path(tmp)
        ctx.progress(0.0, "downloading the base model and the pairs")
        download_inputs(ctx, work)
        try:
            config = config_from_dict(kind, run_config(kind, params, work), source="job")
        except ConfigError as error:
            raise JobFailed(str(error)) from None
        resume = (
            ctx.download_resume_checkpoint(work / "run" / "checkpoints", verified_step_file)
            or False
        )
        to_platform = ctx.training_callbacks()
        try:
            summary = run(config, resume=resume, callbacks=[to_platform], progress=ctx.log)
        except FinetuneError as error:
            raise JobFailed(str(error)) from None
        to_platform.end_if_stopped(summary.stopped)
        ctx.check_stop()  # evaluation and sampling after the last step may have taken a while
        ctx.progress(0.99, "publishing the outputs")
        files = []
        for prefix, folder in summary.outputs.items():
            files += _publish_folder(ctx, Path(folder), prefix)
        if summary.samples:
            ctx.tracker.log_text(json.dumps(summary.samples, indent=1), "samples.json")
        return {
            "kind": kind,
            "steps": summary.steps,
            "seconds": round(summary.seconds, 2),
            "trainable_parameters": summary.trainable_parameters,
            "total_parameters": summary.total_parameters,
            "metrics": summary.last_metrics,
            "baseline": summary.baseline,
            "evaluation": summary.evaluation,
            "samples": summary.samples,
            "files": files,
        }
