"""The pre-training job: a GPT trained on a tokenized dataset version, resumable anywhere.

The worker downloads the version's token shards, builds the engine's run config from the
job's parameters, and trains with engine.train, followed by the job's training callbacks
(workers/training.py): metrics to the platform (and MLflow) as they are logged, every
checkpoint packed into one tar object in the store and reported, so a re-dispatched
attempt (its worker died) downloads the last one and goes on from the same step. At the end
the model is exported (safetensors + config.json: the Hugging Face GPT-2 layout, or the
engine's own for a variant GPT-2 cannot express; engine/train/export.py) and a few samples
are generated for the run page.

Params (validated and filled in by the platform with the engine's schema,
engine/jobparams.py): dataset_version_id, input_names (the local name of each input, in
the order of spec.inputs), preset (engine.train.config.PRESETS), model overrides
(block_size, dropout), train (max_iters, batch_size, grad_accum, eval_interval,
eval_iters, log_interval, device), optim (lr, min_lr, warmup_iters, weight_decay),
checkpoint_interval, seed, sample_prompts, sample_tokens, and resources {devices, nodes,
strategy}: more than one process trains under torchrun (workers/launch.py), the worker
reporting for rank 0; ``train.batch_size`` is per process, as in the engine.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from workers.launch import Resources, run_ranks
from workers.runtime import JobContext, JobFailed


def _download_shards(ctx: JobContext, folder: Path) -> None:
    """The token shards of the version, laid out as engine.data.shards expects."""
    names = ctx.spec.params.get("input_names") or []
    for index, ref in enumerate(ctx.spec.inputs):
        # Shards live under tokens/ in the derived version; the folder must be flat.
        ctx.download(ref.uri, folder / Path(names[index]).name, ref.sha256)
        ctx.check_stop()


def run_config(params: dict[str, Any], run_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The engine's RunConfig as a dict, from the params the platform filled in (every
    setting is there: defaults come from the engine's schema, never from here)."""
    from engine.train.config import preset_model

    resources = Resources.from_params(params)
    model = {**preset_model(params["preset"]), **params["model"]}
    # No progress bar: the worker reports progress through its callbacks.
    parallel = resources.strategy if resources.distributed else "none"
    train = {"progress": False, "parallel": parallel, **params["train"]}
    return {
        "run_dir": str(run_dir),
        "seed": params["seed"],
        "model": model,
        "data": {"path": str(data_dir)},
        "optim": dict(params["optim"]),
        "train": train,
        # Two checkpoints on the worker's disk: each is also in the object store.
        "checkpoint": {
            "interval": params["checkpoint_interval"],
            "keep_last": 2,
            # On several machines rank 0 writes the whole checkpoint (full weights), so the
            # one object in the store resumes every node; on one node FSDP shards it.
            **({"sharded": "never"} if resources.nodes > 1 else {}),
        },
    }


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")  # "data": no absolute paths, links or devices
        top = {Path(m.name).parts[0] for m in tar.getmembers()}
    if len(top) != 1:
        raise JobFailed(f"checkpoint archive {archive.name} must hold one folder")
    return into / top.pop()


def _unpack_checkpoint(archive: Path, run_dir: Path) -> Path:
    """A downloaded checkpoint archive as a folder under run_dir/checkpoints.

    Unpacked apart first, so a damaged archive leaves nothing half-written where the
    trainer looks (the runtime then tries an older checkpoint).
    """
    staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=archive.parent))
    try:
        folder = _unpack(archive, staging)
        target = run_dir / "checkpoints" / folder.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        return Path(shutil.move(folder, target))
    except tarfile.TarError as error:
        raise JobFailed(f"checkpoint archive {archive.name} does not unpack: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)


def _samples(checkpoint: Path, prompts: list[str], tokens: int) -> list[dict[str, str]]:
    from engine.infer.generate import Generator, SamplingParams
    from engine.infer.loading import load_for_generation
    from engine.train.config import ConfigError, samples_config

    try:
        sampling = samples_config(prompts, tokens)
    except ConfigError as error:
        raise JobFailed(str(error)) from None
    model, tokenizer = load_for_generation(checkpoint)
    params = SamplingParams(
        max_new_tokens=sampling.tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        seed=sampling.seed,
    )
    result = Generator(model, tokenizer).generate(sampling.prompts, params)
    return [{"prompt": g.prompt, "text": g.text} for g in result.generations]


def run_pretrain(ctx: JobContext) -> dict[str, Any]:
    from engine.train.checkpoint import CheckpointError
    from engine.train.config import ConfigError, config_from_dict
    from engine.train.export import export_checkpoint
    from engine.train.trainer import Trainer, TrainingError

    params = ctx.spec.params
    resources = Resources.from_params(params)
    with tempfile.TemporaryDirectory(prefix=f"job-{ctx.spec.job_id}-") as tmp:
        work = Path(tmp)
        ctx.progress(0.0, "downloading the token shards")
        _download_shards(ctx, work / "data")
        raw = run_config(params, work / "run", work / "data")
        try:
            config = config_from_dict(raw, source="job")
        except ConfigError as error:
            raise JobFailed(str(error)) from None
        resume = ctx.download_resume_checkpoint(
            work / "resume", lambda archive: _unpack_checkpoint(archive, work / "run")
        )
        to_platform = ctx.training_callbacks(progress_until=0.95)
        if resources.distributed:
            summary = run_ranks(
                ctx, to_platform, config=raw, resources=resources, work=work, resume=resume
            )
        else:
            try:
                summary = Trainer(
                    config, callbacks=[to_platform], resume=resume or False, default_callbacks=False
                ).fit()
            except (TrainingError, CheckpointError) as error:
                raise JobFailed(str(error)) from None
        if summary is None:
            return {"node": "took part"}  # a gang's node without rank 0: it reports nothing
        to_platform.end_if_stopped(summary.stopped)
        if summary.checkpoint is None:
            raise JobFailed("training ended without a checkpoint")
        # Export, sample, publish: a cancel is looked for between every two of them (and
        # before each file), and the outputs are published last, so a job cancelled during
        # export or sampling publishes nothing.
        ctx.check_stop()
        ctx.progress(0.96, "exporting the model")
        export_dir = work / "export"
        export_checkpoint(summary.checkpoint, export_dir)
        ctx.check_stop()
        ctx.progress(0.97, "sampling")
        samples = _samples(summary.checkpoint, params["sample_prompts"], params["sample_tokens"])
        ctx.check_stop()
        ctx.progress(0.98, "publishing the model")
        files = []
        for path in sorted(p for p in export_dir.iterdir() if p.is_file()):
            ctx.check_stop()
            files.append(ctx.publish(path, f"model/{path.name}"))
        ctx.tracker.log_text(json.dumps(samples, indent=1), "samples.json")
        return {
            "step": summary.step,
            "train_loss": summary.train_loss,
            "val_loss": summary.val_loss,
            "best_val_loss": summary.best_val_loss,
            "tokens_per_second": round(summary.tokens_per_second, 1),
            "seconds": round(summary.seconds, 2),
            "samples": samples,
            "files": files,
        }
