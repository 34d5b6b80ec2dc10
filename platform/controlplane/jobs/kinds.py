"""Per job kind: which parameters it takes, which queue runs it, which inputs it reads.

Validation happens here, before a job row exists, so a bad request never becomes a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from controlplane.projects.models import Project
from workers.protocol import JobKind, Queue


class JobRequestError(Exception):
    """Field errors of a job request: {"field": ["message", ...]}."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class JobRequest:
    queue: str
    params: dict[str, Any]
    inputs: list[dict[str, Any]]


def _number(
    params: dict, name: str, errors: dict, *, kind: type, default: Any, low: float, high: float
) -> Any:
    value = params.get(name, default)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        errors[name] = [f"must be {'an integer' if kind is int else 'a number'}"]
        return None
    if not low <= value <= high:
        errors[name] = [f"must be between {low:g} and {high:g}"]
        return None
    return kind(value)


def _choice(
    params: dict, name: str, errors: dict, *, choices, default: str, message: str = ""
) -> str | None:
    """A string out of `choices`. The type is checked first: `[] in PRESETS` would raise
    "unhashable type" instead of saying which values are allowed."""
    value = params.get(name, default)
    if not isinstance(value, str) or value not in choices:
        errors[name] = [message or f"use one of {', '.join(choices)}"]
        return None
    return value


_DEVICES = ("auto", "cpu", "cuda")
_DEVICE_MESSAGE = "use auto, cpu or cuda"


def _validate_inspect(project: Project, params: dict[str, Any]) -> JobRequest:
    from controlplane.uploads.models import Upload

    allowed = {"upload_id", "preview_records", "read_rate_limit_mb_s"}
    errors: dict[str, list[str]] = {name: ["unknown parameter"] for name in params.keys() - allowed}
    upload_id = params.get("upload_id")
    upload = None
    if upload_id is None:
        errors["upload_id"] = ["this field is required"]
    elif isinstance(upload_id, bool) or not isinstance(upload_id, int):
        errors["upload_id"] = ["must be an integer"]
    else:
        upload = Upload.objects.filter(pk=upload_id, project=project).first()
        if upload is None:
            errors["upload_id"] = [f"no upload {upload_id} in this project"]
    preview = _number(params, "preview_records", errors, kind=int, default=5, low=1, high=50)
    rate = _number(
        params, "read_rate_limit_mb_s", errors, kind=float, default=None, low=0.01, high=100000
    )
    if errors:
        raise JobRequestError(errors)
    clean = {"upload_id": upload.pk, "preview_records": preview}
    if rate is not None:
        clean["read_rate_limit_mb_s"] = rate
    inputs = [{"uri": upload.object_key, "sha256": upload.sha256, "size": upload.size}]
    return JobRequest(queue=Queue.CPU, params=clean, inputs=inputs)


def ready_version(project: Project, version_id: Any, errors: dict):
    """A READY dataset version of this project, or None with a message in errors."""
    from controlplane.datasets.models import DatasetVersion, VersionState

    if version_id is None:
        errors["dataset_version_id"] = ["this field is required"]
        return None
    if isinstance(version_id, bool) or not isinstance(version_id, int):
        errors["dataset_version_id"] = ["must be an integer"]
        return None
    version = (
        DatasetVersion.objects.filter(pk=version_id, dataset__project=project)
        .select_related("dataset")
        .first()
    )
    if version is None:
        errors["dataset_version_id"] = [f"no dataset version {version_id} in this project"]
    elif version.state != VersionState.READY:
        errors["dataset_version_id"] = [
            f"version {version.number} of {version.dataset.slug} is {version.state}; "
            "wait for its upload to complete or pick a ready version"
        ]
    else:
        return version
    return None


def _ready_text_version(project: Project, version_id: Any, errors: dict):
    version = ready_version(project, version_id, errors)
    if version is not None and version.dataset.kind != "text":
        errors["dataset_version_id"] = [
            f"{version.dataset.slug} holds {version.dataset.kind}; the data pipeline cleans text"
        ]
        return None
    return version


def _pipeline_stages(raw: Any, errors: dict) -> dict | None:
    """Check the stages against the engine's own config (asked in a subprocess)."""
    from controlplane.engine_tools import pipeline_validate

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors["pipeline"] = ["must be an object (the engine's pipeline config)"]
        return None
    misplaced = {"inputs", "output", "subject_salt"} & set(raw)
    if misplaced:
        errors["pipeline"] = [f"{', '.join(sorted(misplaced))}: set by the platform, leave out"]
        return None
    clean, problem = pipeline_validate({**raw, "inputs": [{"path": "input.jsonl"}]})
    if problem is not None:
        errors["pipeline"] = [problem]
        return None
    if any((stage.get("toxicity") or {}).get("lexicon") for stage in clean.get("stages", [])):
        # A path on the worker's disk: its words would become the filter, and which records
        # it drops would tell a user about files (secrets included) they cannot read.
        errors["pipeline"] = [
            "toxicity.lexicon names a file on the worker; leave it empty (the built-in list)"
        ]
        return None
    for key in ("inputs", "output", "subject_salt"):
        clean.pop(key, None)
    return clean


def _validate_data_pipeline(project: Project, params: dict[str, Any]) -> JobRequest:
    allowed = {"dataset_version_id", "pipeline", "tokenizer", "val_fraction", "text_field"}
    errors: dict[str, list[str]] = {name: ["unknown parameter"] for name in params.keys() - allowed}
    version = _ready_text_version(project, params.get("dataset_version_id"), errors)
    pipeline = _pipeline_stages(params.get("pipeline"), errors)
    tokenizer = params.get("tokenizer") or {"kind": "char"}
    if (
        not isinstance(tokenizer, dict)
        or _choice(tokenizer, "kind", {}, choices=("char", "bpe"), default="") is None
    ):
        errors["tokenizer"] = ['must be {"kind": "char"} or {"kind": "bpe", "vocab_size": N}']
    elif set(tokenizer) - {"kind", "vocab_size"}:
        errors["tokenizer"] = ["only kind and vocab_size may be set"]
    elif tokenizer["kind"] == "bpe":
        size = _number(tokenizer, "vocab_size", errors, kind=int, default=4096, low=260, high=65535)
        if "vocab_size" in errors:
            errors["tokenizer"] = [f"vocab_size {errors.pop('vocab_size')[0]}"]
        tokenizer = {"kind": "bpe", "vocab_size": size}
    val_fraction = _number(
        params, "val_fraction", errors, kind=float, default=0.05, low=0.001, high=0.5
    )
    text_field = params.get("text_field", "text")
    if not isinstance(text_field, str) or not text_field:
        errors["text_field"] = ["must be a field name"]
    if errors:
        raise JobRequestError(errors)
    files = list(version.files.order_by("name", "id"))
    clean = {
        "dataset_version_id": version.pk,
        "pipeline": pipeline,
        "tokenizer": tokenizer,
        "val_fraction": val_fraction,
        "text_field": text_field,
        "subject_field": version.dataset.subject_field,
        "input_names": [f.name for f in files],
    }
    inputs = [{"uri": f.object_key, "sha256": f.sha256, "size": f.size} for f in files]
    return JobRequest(queue=Queue.CPU, params=clean, inputs=inputs)


# name: (type, default, low, high); the engine checks the combination again when it builds
# the run, and a combination it refuses fails the job with the engine's message.
_TRAIN_NUMBERS = {
    "max_iters": (int, 2000, 1, 10_000_000),
    "batch_size": (int, 12, 1, 4096),
    "grad_accum": (int, 1, 1, 1024),
    "eval_interval": (int, 250, 0, 10_000_000),
    "eval_iters": (int, 20, 1, 10_000),
    "log_interval": (int, 10, 1, 100_000),
}
_OPTIM_NUMBERS = {
    "lr": (float, 1e-3, 1e-7, 1.0),
    "min_lr": (float, 1e-4, 0.0, 1.0),
    "warmup_iters": (int, 100, 0, 10_000_000),
    "weight_decay": (float, 0.1, 0.0, 1.0),
}
_MODEL_NUMBERS = {"block_size": (int, None, 8, 8192), "dropout": (float, 0.0, 0.0, 0.9)}


def _numbers(raw: Any, spec: dict, errors: dict, where: str) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors[where] = ["must be an object"]
        return {}
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        errors[where] = [f"unknown key(s) {', '.join(unknown)}; use {', '.join(spec)}"]
        return {}
    clean = {}
    for name, (kind, default, low, high) in spec.items():
        local: dict[str, list[str]] = {}
        value = _number(raw, name, local, kind=kind, default=default, low=low, high=high)
        if local:
            errors[f"{where}.{name}"] = local[name]
        elif value is not None:
            clean[name] = value
    return clean


def _token_shard_version(project: Project, version_id: Any, errors: dict):
    version = _ready_text_version(project, version_id, errors)
    if (
        version is not None
        and not version.files.filter(role="shard", name__startswith="tokens/").exists()
    ):
        errors["dataset_version_id"] = [
            f"version {version.number} of {version.dataset.slug} holds no token shards; "
            "run the data pipeline on it and train on the version it derives"
        ]
        return None
    return version


def _validate_pretrain(project: Project, params: dict[str, Any]) -> JobRequest:
    from controlplane.jobs.dispatch import training_queue
    from workers.jobs.pretrain import PRESETS

    allowed = {
        "dataset_version_id",
        "preset",
        "model",
        "train",
        "optim",
        "checkpoint_interval",
        "seed",
        "sample_prompts",
        "sample_tokens",
        "device",
    }
    errors: dict[str, list[str]] = {name: ["unknown parameter"] for name in params.keys() - allowed}
    version = _token_shard_version(project, params.get("dataset_version_id"), errors)
    preset = _choice(params, "preset", errors, choices=list(PRESETS), default="tiny")
    model = _numbers(params.get("model"), _MODEL_NUMBERS, errors, "model")
    train = _numbers(params.get("train"), _TRAIN_NUMBERS, errors, "train")
    optim = _numbers(params.get("optim"), _OPTIM_NUMBERS, errors, "optim")
    if optim.get("min_lr", 0) > optim.get("lr", 1):
        errors["optim.min_lr"] = ["must not exceed optim.lr"]
    interval = _number(
        params, "checkpoint_interval", errors, kind=int, default=0, low=0, high=10_000_000
    )
    seed = _number(params, "seed", errors, kind=int, default=1337, low=0, high=2**31 - 1)
    tokens = _number(params, "sample_tokens", errors, kind=int, default=200, low=1, high=4000)
    prompts = params.get("sample_prompts", ["\n"])
    if (
        not isinstance(prompts, list)
        or not 1 <= len(prompts) <= 8
        or not all(isinstance(p, str) and 0 < len(p) <= 500 for p in prompts)
    ):
        errors["sample_prompts"] = ["1 to 8 prompts, each a string of 1 to 500 characters"]
    device = _choice(
        params, "device", errors, choices=_DEVICES, default="auto", message=_DEVICE_MESSAGE
    )
    if errors:
        raise JobRequestError(errors)
    files = list(version.files.filter(name__startswith="tokens/").order_by("name"))
    clean = {
        "dataset_version_id": version.pk,
        "preset": preset,
        "model": model,
        "train": {**train, "device": device},
        "optim": optim,
        "checkpoint_interval": interval,
        "seed": seed,
        "sample_prompts": prompts,
        "sample_tokens": tokens,
        "input_names": [f.name for f in files],
    }
    inputs = [{"uri": f.object_key, "sha256": f.sha256, "size": f.size} for f in files]
    return JobRequest(queue=training_queue(), params=clean, inputs=inputs)


_IMAGE_TRAIN_NUMBERS = {
    "steps": (int, None, 1, 10_000_000),
    "batch_size": (int, None, 1, 4096),
    "lr": (float, None, 1e-7, 1.0),
    "log_interval": (int, None, 1, 100_000),
    "checkpoint_interval": (int, None, 0, 10_000_000),
    "sample_interval": (int, None, 0, 10_000_000),
}


def _validate_image_training(project: Project, params: dict[str, Any]) -> JobRequest:
    """Diffusion, GAN and VAE on the 8x8 digits (the engine loads them itself)."""
    from controlplane.jobs.dispatch import training_queue

    allowed = {"preset", "train", "eval_per_class", "device", "seed"}
    errors: dict[str, list[str]] = {name: ["unknown parameter"] for name in params.keys() - allowed}
    preset = _choice(
        params,
        "preset",
        errors,
        choices=("recipe", "tiny"),
        default="recipe",
        message="use recipe (configs/vision) or tiny (seconds on a CPU)",
    )
    train = _numbers(params.get("train"), _IMAGE_TRAIN_NUMBERS, errors, "train")
    evaluate = _number(params, "eval_per_class", errors, kind=int, default=0, low=0, high=1000)
    seed = _number(params, "seed", errors, kind=int, default=0, low=0, high=2**31 - 1)
    device = _choice(
        params, "device", errors, choices=_DEVICES, default="auto", message=_DEVICE_MESSAGE
    )
    if errors:
        raise JobRequestError(errors)
    clean = {
        "preset": preset,
        "train": train,
        "eval_per_class": evaluate,
        "seed": seed,
        "device": device,
    }
    return JobRequest(queue=training_queue(), params=clean, inputs=[])


def _validate_posttrain(project: Project, params: dict[str, Any], *, kind: JobKind) -> JobRequest:
    # posttrain.py builds on this module's helpers, so it is imported on first use.
    from controlplane.jobs.posttrain import validate_posttrain

    return validate_posttrain(project, kind, params)


_VALIDATORS = {
    JobKind.DIFFUSION: _validate_image_training,
    JobKind.GAN: _validate_image_training,
    JobKind.VAE: _validate_image_training,
    JobKind.INSPECT: _validate_inspect,
    JobKind.DATA_PIPELINE: _validate_data_pipeline,
    JobKind.PRETRAIN: _validate_pretrain,
    **{
        kind: partial(_validate_posttrain, kind=kind)
        for kind in (
            JobKind.SFT,
            JobKind.LORA,
            JobKind.QLORA,
            JobKind.REWARD,
            JobKind.DPO,
            JobKind.PPO,
        )
    },
}


def validate_job_request(*, project: Project, kind: str, params: Any) -> JobRequest:
    if kind not in _VALIDATORS:
        raise JobRequestError(
            {"kind": [f"unknown job kind '{kind}'; use one of {', '.join(_VALIDATORS)}"]}
        )
    if not isinstance(params, dict):
        raise JobRequestError({"params": ["must be an object"]})
    return _VALIDATORS[JobKind(kind)](project, params)
