"""Post-training jobs (sft, lora, qlora, reward, dpo, ppo): what they take and what they read.

A post-training job starts from the model a succeeded job of the same project published
(a pretrain job, or an earlier post-training job: they publish the same three files), so
results chain: pretrain -> sft -> dpo. A request such as

    {"kind": "dpo", "params": {"base_job_id": 12, "dataset_version_id": 7,
                               "train": {"steps": 300}, "dpo": {"beta": 0.1}}}

becomes a job whose params hold every setting with its default filled in, and whose
inputs are the base model's files, the reward model's (ppo) and the pairs files, named
for the worker in params["input_names"]:

    base/config.json, base/model.safetensors, base/tokenizer.json,
    reward/...            (ppo: the reward job's reward/* artifacts)
    data/pairs.jsonl      (the version's .jsonl / .jsonl.gz files; none = built-in pairs)

The worker (workers/jobs/finetune.py) relies on exactly this shape; the engine checks the
settings again when it builds the run and fails the job with its own message if a
combination does not work (a LoRA target that matches no module, for example).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from controlplane.jobs.dispatch import training_queue
from controlplane.jobs.models import ArtifactKind, Job, JobArtifact, JobState
from controlplane.jobs.params import check_params, param_schema
from controlplane.jobs.requests import JobRequest, JobRequestError, ready_version
from controlplane.projects.models import Project
from workers.protocol import JobKind

POSTTRAIN_KINDS = (
    JobKind.SFT,
    JobKind.LORA,
    JobKind.QLORA,
    JobKind.REWARD,
    JobKind.DPO,
    JobKind.PPO,
)
# What a job must have published to be a base model (pretrain and post-training jobs do).
MODEL_FILES = ("model/config.json", "model/model.safetensors", "model/tokenizer.json")
_PAIR_FIELDS = {
    JobKind.SFT: "prompt/response",
    JobKind.LORA: "prompt/response",
    JobKind.QLORA: "prompt/response",
    JobKind.REWARD: "prompt/chosen/rejected",
    JobKind.DPO: "prompt/chosen/rejected",
    JobKind.PPO: "prompt/chosen/rejected",
}


def trains_adapters(kind: str, params: dict[str, Any]) -> bool:
    """Whether the job trains LoRA adapters (always, never, or when it sets lora: the
    kind's schema says which)."""
    adapters = param_schema(kind)["x-adapters"]
    return adapters == "always" or (adapters == "optional" and params.get("lora") is not None)


def published(job: Job, prefix: str) -> list[JobArtifact]:
    """The job's output artifacts under `prefix`, by name; a name an earlier attempt also
    published counts once, as its latest upload."""
    latest = {}
    for artifact in job.artifacts.filter(kind=ArtifactKind.OUTPUT, name__startswith=prefix):
        if artifact.name not in latest or artifact.pk > latest[artifact.name].pk:
            latest[artifact.name] = artifact
    return [latest[name] for name in sorted(latest)]


def has_model(job: Job) -> bool:
    """Whether a post-training job can start from this job's model."""
    if job.state != JobState.SUCCEEDED:
        return False
    names = set(
        job.artifacts.filter(kind=ArtifactKind.OUTPUT, name__in=MODEL_FILES).values_list(
            "name", flat=True
        )
    )
    return names == set(MODEL_FILES)


def pair_files(version) -> QuerySet:
    return version.files.filter(role="data").filter(
        Q(name__endswith=".jsonl") | Q(name__endswith=".jsonl.gz")
    )


def pair_versions_for(project: Project) -> QuerySet:
    """Ready versions of the project that hold JSON-lines files: what a job can train on."""
    from controlplane.datasets.models import DatasetVersion, VersionState

    return (
        DatasetVersion.objects.filter(
            dataset__project=project,
            state=VersionState.READY,
            files__role="data",
        )
        .filter(Q(files__name__endswith=".jsonl") | Q(files__name__endswith=".jsonl.gz"))
        .select_related("dataset")
        .distinct()
        .order_by("dataset__slug", "-number")
    )


def reward_jobs_for(project: Project) -> QuerySet[Job]:
    """Succeeded reward jobs of the project that published their model: what ppo can use."""
    return (
        Job.objects.filter(
            project=project,
            kind=JobKind.REWARD,
            state=JobState.SUCCEEDED,
            artifacts__kind=ArtifactKind.OUTPUT,
            artifacts__name__startswith="reward/",
        )
        .distinct()
        .order_by("-id")
    )


def _source_job(
    project: Project, value: Any, field: str, errors: dict, *, kind: str | None = None
) -> Job | None:
    """A succeeded job of this project. Another project's job gets the not-found message,
    so an id reveals nothing about other projects."""
    if value is None:
        errors[field] = ["this field is required"]
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors[field] = ["must be an integer (a job id)"]
        return None
    job = Job.objects.filter(project=project, pk=value).first()
    if job is None:
        errors[field] = [f"no job {value} in this project"]
    elif kind is not None and job.kind != kind:
        errors[field] = [f"job {value} is a {job.kind} job; pick a succeeded {kind} job"]
    elif job.state != JobState.SUCCEEDED:
        errors[field] = [
            f"job {value} is {job.state}; only a succeeded job's model can be used"
            + ("; wait for it to finish" if not job.is_terminal else "")
        ]
    else:
        return job
    return None


def _base_model(project: Project, value: Any, errors: dict) -> list[JobArtifact]:
    job = _source_job(project, value, "base_job_id", errors)
    if job is None:
        return []
    files = published(job, "model/")
    missing = [name for name in MODEL_FILES if name not in {a.name for a in files}]
    if missing:
        errors["base_job_id"] = [
            f"job {job.pk} ({job.kind}) published no model ({', '.join(missing)} missing); "
            "start from a pretrain job or a finished post-training job"
        ]
        return []
    return files


def _reward_model(project: Project, value: Any, errors: dict) -> list[JobArtifact]:
    job = _source_job(project, value, "reward_job_id", errors, kind=JobKind.REWARD)
    if job is None:
        return []
    files = published(job, "reward/")
    if not files:
        errors["reward_job_id"] = [f"job {job.pk} published no reward model (no reward/ files)"]
    return files


def _pairs_version(project: Project, value: Any, kind: str, errors: dict):
    version = ready_version(project, value, errors)
    if version is not None and not pair_files(version).exists():
        errors["dataset_version_id"] = [
            f"version {version.number} of {version.dataset.slug} holds no .jsonl or "
            f".jsonl.gz file; upload {_PAIR_FIELDS[kind]} pairs as JSON lines, or leave "
            "dataset_version_id out to train on the built-in Shakespeare pairs"
        ]
        return None
    return version


def _misplaced_settings(kind: str, given: dict[str, Any]) -> dict[str, list[str]]:
    """Settings of another kind get a message that says whose they are, not "unknown"."""
    errors = {}
    if kind != JobKind.PPO and "reward_job_id" in given:
        errors["reward_job_id"] = ["only ppo jobs take a reward model"]
    if kind == JobKind.SFT and "lora" in given:
        errors["lora"] = ["sft trains all the weights; use kind lora or qlora to train adapters"]
    for section in ("dpo", "ppo"):
        if kind != section and section in given:
            errors[section] = [f"only {section} jobs take {section} settings"]
    return errors


def _engine_settings(kind: str, params: dict[str, Any]) -> tuple[dict, dict]:
    """The engine's settings checked and filled by the kind's schema; a job that trains
    adapters gets the adapter learning rate by default."""
    schema = param_schema(kind)
    lr = schema["properties"]["train"]["properties"]["lr"]
    if trains_adapters(kind, params) and "x-default-with-adapters" in lr:
        lr["default"] = lr["x-default-with-adapters"]
    return check_params(kind, params, schema=schema)


def validate_posttrain(project: Project, kind: str, params: dict[str, Any]) -> JobRequest:
    kind = JobKind(kind)
    # A key set to null counts as left out (its default applies).
    given = {name: value for name, value in params.items() if value is not None}
    clean, errors = _engine_settings(kind, params)
    errors.update(_misplaced_settings(kind, given))

    base_files = _base_model(project, params.get("base_job_id"), errors)
    reward_files = []
    if kind == JobKind.PPO:
        reward_files = _reward_model(project, params.get("reward_job_id"), errors)
    version = None
    if params.get("dataset_version_id") is not None:
        version = _pairs_version(project, params["dataset_version_id"], kind, errors)
        for name in ("pairs_count", "pairs_corruption"):
            if name in given:
                errors[name] = [
                    "only for the built-in pairs; leave it out when dataset_version_id is set"
                ]
            clean.pop(name, None)
    if errors:
        raise JobRequestError(errors)

    clean["base_job_id"] = params["base_job_id"]
    named = [(f"base/{a.name.removeprefix('model/')}", a) for a in base_files]
    if kind == JobKind.PPO:
        clean["reward_job_id"] = params["reward_job_id"]
        named += [(f"reward/{a.name.removeprefix('reward/')}", a) for a in reward_files]
    if version is not None:
        clean["dataset_version_id"] = version.pk
        named += [(f"data/{f.name}", f) for f in pair_files(version).order_by("name", "id")]
    clean["input_names"] = [name for name, _ in named]
    inputs = [{"uri": f.object_key, "sha256": f.sha256, "size": f.size} for _, f in named]
    return JobRequest(queue=training_queue(), params=clean, inputs=inputs)
