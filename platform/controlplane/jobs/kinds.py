"""Per job kind: which parameters it takes, which queue runs it, which inputs it reads.

Validation happens here, before a job row exists, so a bad request never becomes a job.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _ready_text_version(project: Project, version_id: Any, errors: dict):
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
    elif version.dataset.kind != "text":
        errors["dataset_version_id"] = [
            f"{version.dataset.slug} holds {version.dataset.kind}; the data pipeline cleans text"
        ]
    else:
        return version
    return None


def _pipeline_stages(raw: Any, errors: dict) -> dict | None:
    """Check the stages against the engine's own config (imported here only: numpy)."""
    from engine.data.config import ConfigError, config_to_dict, load_pipeline_config

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors["pipeline"] = ["must be an object (the engine's pipeline config)"]
        return None
    misplaced = {"inputs", "output", "subject_salt"} & set(raw)
    if misplaced:
        errors["pipeline"] = [f"{', '.join(sorted(misplaced))}: set by the platform, leave out"]
        return None
    try:
        config = load_pipeline_config({**raw, "inputs": [{"path": "input.jsonl"}]})
    except ConfigError as error:
        errors["pipeline"] = [str(error)]
        return None
    clean = config_to_dict(config)
    for key in ("inputs", "output", "subject_salt"):
        clean.pop(key, None)
    return clean


def _validate_data_pipeline(project: Project, params: dict[str, Any]) -> JobRequest:
    allowed = {"dataset_version_id", "pipeline", "tokenizer", "val_fraction", "text_field"}
    errors: dict[str, list[str]] = {name: ["unknown parameter"] for name in params.keys() - allowed}
    version = _ready_text_version(project, params.get("dataset_version_id"), errors)
    pipeline = _pipeline_stages(params.get("pipeline"), errors)
    tokenizer = params.get("tokenizer") or {"kind": "char"}
    if not isinstance(tokenizer, dict) or tokenizer.get("kind") not in ("char", "bpe"):
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


_VALIDATORS = {JobKind.INSPECT: _validate_inspect, JobKind.DATA_PIPELINE: _validate_data_pipeline}


def validate_job_request(*, project: Project, kind: str, params: Any) -> JobRequest:
    if kind not in _VALIDATORS:
        raise JobRequestError(
            {"kind": [f"unknown job kind '{kind}'; use one of {', '.join(_VALIDATORS)}"]}
        )
    if not isinstance(params, dict):
        raise JobRequestError({"params": ["must be an object"]})
    return _VALIDATORS[JobKind(kind)](project, params)
