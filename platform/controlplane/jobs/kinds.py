"""Per job kind: which parameters it takes, which queue runs it, which inputs it reads.

Validation happens here, before a job row exists, so a bad request never becomes a job.
The engine's settings are checked against its schemas (params.py: defaults, ranges and
presets come from the engine's config dataclasses); this module adds what only the
platform can check (dataset versions, uploads, the pipeline config through the engine).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from controlplane.datasets.models import FileRole
from controlplane.datasets.subject_index import RAW_INDEX_NAMES
from controlplane.jobs.dispatch import training_queue
from controlplane.jobs.evaluate import validate_evaluate
from controlplane.jobs.params import check_params, kinds_with_resources, param_leaf
from controlplane.jobs.posttrain import validate_posttrain
from controlplane.jobs.requests import JobRequest, JobRequestError, ready_version
from controlplane.projects.models import Project
from workers.protocol import JobKind, Queue


def _upload(project: Project, upload_id: Any, errors: dict):
    from controlplane.uploads.models import Upload

    if upload_id is None:
        errors["upload_id"] = ["this field is required"]
    elif isinstance(upload_id, bool) or not isinstance(upload_id, int):
        errors["upload_id"] = ["must be an integer"]
    else:
        upload = Upload.objects.filter(pk=upload_id, project=project).first()
        if upload is not None:
            return upload
        errors["upload_id"] = [f"no upload {upload_id} in this project"]
    return None


def _validate_inspect(project: Project, params: dict[str, Any]) -> JobRequest:
    clean, errors = check_params("inspect", params)
    upload = _upload(project, params.get("upload_id"), errors)
    if errors:
        raise JobRequestError(errors)
    inputs = [{"uri": upload.object_key, "sha256": upload.sha256, "size": upload.size}]
    return JobRequest(queue=Queue.CPU, params={"upload_id": upload.pk, **clean}, inputs=inputs)


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
    # The subject key travels in the dispatch message only (jobs/dispatch.py): a key in the
    # params would be stored in the job row for anyone who can read the job.
    misplaced = {"inputs", "output", "subject_salt", "subject_key"} & set(raw)
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
    for key in ("inputs", "output", "subject_salt", "subject_key"):
        clean.pop(key, None)
    return clean


def _validate_data_pipeline(project: Project, params: dict[str, Any]) -> JobRequest:
    clean, errors = check_params("data_pipeline", params)
    version = _ready_text_version(project, params.get("dataset_version_id"), errors)
    if "pipeline" not in errors:
        clean["pipeline"] = _pipeline_stages(clean.get("pipeline"), errors)
    if errors:
        raise JobRequestError(errors)
    # A raw upload's subject index (datasets/subject_index.py) is not data to clean.
    files = list(
        version.files.exclude(role=FileRole.INDEX, name__in=RAW_INDEX_NAMES).order_by("name", "id")
    )
    clean.update(
        dataset_version_id=version.pk,
        subject_field=version.dataset.subject_field,
        input_names=[f.name for f in files],
    )
    inputs = [{"uri": f.object_key, "sha256": f.sha256, "size": f.size} for f in files]
    return JobRequest(queue=Queue.CPU, params=clean, inputs=inputs)


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
    clean, errors = check_params("pretrain", params)
    version = _token_shard_version(project, params.get("dataset_version_id"), errors)
    optim = clean.get("optim", {})
    if "optim" not in errors and optim.get("min_lr", 0) > optim.get("lr", 1):
        errors["optim.min_lr"] = ["must not exceed optim.lr"]
    if errors:
        raise JobRequestError(errors)
    files = list(version.files.filter(name__startswith="tokens/").order_by("name"))
    # The engine's device setting is train.device; the job keeps it there.
    clean["train"]["device"] = clean.pop("device")
    clean.update(dataset_version_id=version.pk, input_names=[f.name for f in files])
    inputs = [{"uri": f.object_key, "sha256": f.sha256, "size": f.size} for f in files]
    return JobRequest(queue=training_queue(), params=clean, inputs=inputs)


def _validate_image_training(project: Project, params: dict[str, Any], *, kind: str) -> JobRequest:
    """Diffusion, GAN and VAE on the 8x8 digits (the engine loads them itself)."""
    clean, errors = check_params(kind, params)
    if errors:
        raise JobRequestError(errors)
    return JobRequest(queue=training_queue(), params=clean, inputs=[])


def _validate_posttrain(project: Project, params: dict[str, Any], *, kind: JobKind) -> JobRequest:
    return validate_posttrain(project, kind, params)


def _validate_evaluate(project: Project, params: dict[str, Any]) -> JobRequest:
    return validate_evaluate(project, params)


def _validate_erasure(project: Project, params: dict[str, Any]) -> JobRequest:
    # An erasure job carries a data subject's identifiers in its dispatch message: only an
    # approved erasure request starts one (controlplane/gdpr/erasure.py builds its request
    # itself), never a member through the jobs API.
    raise JobRequestError(
        {"kind": ["erasure jobs are started by an approved erasure request (GDPR), not here"]}
    )


_VALIDATORS = {
    **{
        kind: partial(_validate_image_training, kind=kind)
        for kind in (JobKind.DIFFUSION, JobKind.GAN, JobKind.VAE)
    },
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
    JobKind.EVALUATE: _validate_evaluate,
    JobKind.ERASURE: _validate_erasure,
}


def _register_as(kind: str, params: dict[str, Any], errors: dict) -> str | None:
    """The model name a succeeded job is registered under (the registry's name rule)."""
    import re

    from controlplane.jobs.params import PLATFORM_FIELDS
    from controlplane.registry.models import MODEL_NAME_PATTERN, model_name_validator

    name = params.get("register_as")
    if name is None or "register_as" not in PLATFORM_FIELDS.get(kind, ()):
        return None  # left out, or an unknown parameter of this kind (check_params says so)
    if not isinstance(name, str) or not re.fullmatch(MODEL_NAME_PATTERN, name):
        errors["register_as"] = [model_name_validator.message]
        return None
    return name


# What validation derives into a job's stored parameters (the worker's list of input
# names, the dataset's subject field): not the caller's to give, so dropped again below.
_DERIVED_PARAMS = ("input_names", "subject_field")


def resubmittable_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """A job's stored (validated) parameters as a caller would submit them to create the
    same job again (a retraining): derived fields removed, moved ones put back."""
    clean = {k: v for k, v in (params or {}).items() if k not in _DERIVED_PARAMS}
    if kind == JobKind.PRETRAIN and isinstance(clean.get("train"), dict):
        train = dict(clean["train"])
        if "device" in train:
            clean["device"] = train.pop("device")  # _validate_pretrain moved it there
        clean["train"] = train
    return clean


def resources_errors(kind: str, resources: dict[str, Any]) -> dict[str, list[str]]:
    """What the kind (its schema's flags) and this installation cannot do of a job's
    validated `resources`; ranges and types were checked with the schema already."""
    schema = param_leaf(kind, "resources")
    devices, nodes = resources["devices"], resources["nodes"]
    errors: dict[str, list[str]] = {}
    if resources["strategy"] == "fsdp" and not schema["x-shardable"]:
        errors["resources.strategy"] = [
            f"{kind} jobs cannot shard their model (fsdp); use ddp "
            f"(fsdp: {', '.join(kinds_with_resources('x-shardable'))} jobs)"
        ]
    if devices * nodes > 1 and not schema["x-data-parallel"]:
        field = "resources.devices" if devices > 1 else "resources.nodes"
        errors[field] = [
            f"{kind} jobs train in one process: devices and nodes must be 1 "
            f"(asked {devices} x {nodes})"
        ]
    elif nodes > 1 and not multi_node_available():
        errors["resources.nodes"] = [
            "several nodes need a broker (CELERY_BROKER_URL=redis://...) and gpu workers on "
            "several machines; the embedded single-machine default runs one node "
            "(docs/distributed.md)"
        ]
    return errors


def multi_node_available() -> bool:
    """A gang of node tasks needs a broker every machine reaches: not the embedded
    default's filesystem broker, whose folder only this machine sees."""
    from django.conf import settings

    return not str(settings.CELERY.get("broker_url", "")).startswith("filesystem://")


def validate_job_request(*, project: Project, kind: str, params: Any) -> JobRequest:
    if kind not in _VALIDATORS:
        raise JobRequestError(
            {"kind": [f"unknown job kind '{kind}'; use one of {', '.join(_VALIDATORS)}"]}
        )
    if not isinstance(params, dict):
        raise JobRequestError({"params": ["must be an object"]})
    errors: dict[str, list[str]] = {}
    register_as = _register_as(kind, params, errors)
    try:
        request = _VALIDATORS[JobKind(kind)](project, params)
    except JobRequestError as error:
        raise JobRequestError({**error.errors, **errors}) from None
    if isinstance(request.params.get("resources"), dict):
        errors.update(resources_errors(kind, request.params["resources"]))
    if errors:
        raise JobRequestError(errors)
    if register_as is not None:
        request = replace(request, params={**request.params, "register_as": register_as})
    return request
