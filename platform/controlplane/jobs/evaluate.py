"""The `evaluate` job kind: what it takes and what it reads.

    {"kind": "evaluate", "params": {"model_version_id": 7, "samples": 64}}

The version must be a ready version of a model of this project (another project's id gets
the not-found message). A text model is evaluated on the val split of a token-shard
dataset version: the one named, or by default the one the model was pre-trained on (found
through the source job's chain of base jobs); the memorisation check reads the train split
of that training version. An image model is evaluated on the built-in digits. The job
becomes, for the worker (workers/jobs/evaluate.py):

    params: every EvalConfig setting (defaults filled), model_version_id, task,
            dataset_version_id and training_dataset_version_id (text), input_names
    inputs: model/<file> (the version's copies), eval/<val shards, manifest, tokenizer>,
            train/<train shards, manifest>

It runs on the training queue, like the jobs that made the model.
"""

from __future__ import annotations

from typing import Any

from controlplane.jobs.dispatch import training_queue
from controlplane.jobs.models import Job
from controlplane.jobs.params import check_params
from controlplane.jobs.requests import JobRequest, JobRequestError
from controlplane.projects.models import Project

TEXT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_CHAIN_LIMIT = 50  # base jobs followed at most (a chain is a few jobs long)


def ready_model_version(project: Project, value: Any, errors: dict):
    """A READY version of a model of this project, or None with a message in errors."""
    from controlplane.registry.models import ModelVersion, VersionState

    if value is None:
        errors["model_version_id"] = ["this field is required"]
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors["model_version_id"] = ["must be an integer (a model version id)"]
        return None
    version = (
        ModelVersion.objects.filter(pk=value, model__project=project)
        .select_related("model", "source_job")
        .first()
    )
    if version is None:
        errors["model_version_id"] = [f"no model version {value} in this project"]
    elif version.state != VersionState.READY:
        wait = "; wait for its registration to finish" if version.state == "registering" else ""
        errors["model_version_id"] = [
            f"version {version.number} of {version.model.name} is {version.state}; "
            f"only a ready version can be evaluated{wait}"
        ]
    else:
        return version
    return None


def training_dataset_version_id(version) -> int | None:
    """The token-shard dataset version the model was pre-trained on: the source job's, or
    its base job's (post-training jobs), up the chain to the pretrain job."""
    job = version.source_job
    for _ in range(_CHAIN_LIMIT):
        if job is None:
            return None
        if job.kind == "pretrain":
            return job.params.get("dataset_version_id")
        base = job.params.get("base_job_id")
        if base is None:
            return None
        job = Job.objects.filter(pk=base, project_id=job.project_id).first()
    return None


def _model_files(version, text: bool, errors: dict) -> list:
    files = list(version.files.order_by("name", "id"))
    if text:
        picked = [f for f in files if f.name.rsplit("/", 1)[-1] in TEXT_FILES]
        missing = set(TEXT_FILES) - {f.name.rsplit("/", 1)[-1] for f in picked}
        problem = f"lacks {', '.join(sorted(missing))}" if missing else None
    else:
        picked = [f for f in files if f.role == "checkpoint" or f.name.endswith(".pt")][-1:]
        problem = None if picked else "holds no image-model checkpoint (.pt)"
    if problem:
        errors["model_version_id"] = [
            f"version {version.number} of {version.model.name} {problem}; it cannot be evaluated"
        ]
    return picked


def _shards(dataset_version, split: str) -> list:
    names = ["tokens/manifest.json"] + (["tokens/tokenizer.json"] if split == "val" else [])
    files = dataset_version.files.filter(name__startswith="tokens/").order_by("name", "id")
    return [f for f in files if f.name in names or f.name.startswith(f"tokens/{split}_")]


def _text_data(project: Project, version, given: Any, errors: dict):
    """(eval version, training version or None) of a text model."""
    from controlplane.datasets.models import DatasetVersion, VersionState
    from controlplane.jobs import kinds  # imports this module: asked for at call time

    trained_on = training_dataset_version_id(version)
    training = None
    if trained_on is not None:
        training = (
            DatasetVersion.objects.filter(
                pk=trained_on, dataset__project=project, state=VersionState.READY
            )
            .select_related("dataset")
            .first()
        )
    if given is not None:
        return kinds._token_shard_version(project, given, errors), training
    if training is None:
        errors["dataset_version_id"] = [
            f"the data version {version.model.name} v{version.number} was trained on is not "
            "known (or no longer ready); name a token-shard dataset_version_id to evaluate on"
        ]
        return None, None
    return kinds._token_shard_version(project, training.pk, errors), training


def validate_evaluate(project: Project, params: dict[str, Any]) -> JobRequest:
    clean, errors = check_params("evaluate", params)
    version = ready_model_version(project, params.get("model_version_id"), errors)
    if version is None:
        raise JobRequestError(errors)
    text = version.model.task == "text-generation"
    files = _model_files(version, text, errors)
    eval_version = training = None
    given = params.get("dataset_version_id")
    if text:
        eval_version, training = _text_data(project, version, given, errors)
    elif given is not None:
        errors["dataset_version_id"] = [
            "image models are evaluated on the built-in digits; leave dataset_version_id out"
        ]
    if errors:
        raise JobRequestError(errors)
    named = [(f"model/{f.name.rsplit('/', 1)[-1]}", f) for f in files]
    clean.update(model_version_id=version.pk, task=version.model.task)
    if text:
        named += [
            (f"eval/{f.name.removeprefix('tokens/')}", f) for f in _shards(eval_version, "val")
        ]
        clean["dataset_version_id"] = eval_version.pk
        clean["training_dataset_version_id"] = training.pk if training else None
        if training is not None:
            named += [
                (f"train/{f.name.removeprefix('tokens/')}", f) for f in _shards(training, "train")
            ]
    clean["input_names"] = [name for name, _ in named]
    inputs = [{"uri": f.object_key, "sha256": f.sha256, "size": f.size} for _, f in named]
    return JobRequest(queue=training_queue(), params=clean, inputs=inputs)
