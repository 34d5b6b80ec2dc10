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

from controlplane.jobs.kinds import (
    _DEVICE_MESSAGE,
    _DEVICES,
    JobRequest,
    JobRequestError,
    _choice,
    _number,
    _numbers,
    ready_version,
)
from controlplane.jobs.models import ArtifactKind, Job, JobArtifact, JobState
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
_ADAPTER_KINDS = {JobKind.LORA, JobKind.QLORA}  # always adapters; sft never, the rest optional

# Default learning rates. Full fine-tuning moves every weight of a model that already
# writes well, so it takes small steps, and the preference methods (dpo, ppo) the smallest:
# they must stay near their reference model. Adapters start from B = 0 and hold ~1% of the
# parameters, so they take about ten times the rate of the same kind on all weights.
_LR_ALL_WEIGHTS = {JobKind.SFT: 1e-4, JobKind.REWARD: 5e-5, JobKind.DPO: 1e-5, JobKind.PPO: 1e-5}
_LR_ADAPTERS = {
    JobKind.LORA: 1e-3,
    JobKind.QLORA: 1e-3,
    JobKind.REWARD: 5e-4,
    JobKind.DPO: 1e-4,
    JobKind.PPO: 1e-4,
}

# name: (type, default, low, high), as in kinds.py; "lr" gets its default per kind.
_TRAIN = {
    "steps": (int, 200, 1, 1_000_000),
    "batch_size": (int, 8, 1, 1024),
    "lr": (float, None, 1e-7, 1.0),
    "warmup_steps": (int, 10, 0, 1_000_000),
    "log_interval": (int, 10, 1, 100_000),
    "eval_interval": (int, 50, 0, 1_000_000),  # 0: no evaluation during training
    "checkpoint_interval": (int, 0, 0, 1_000_000),  # 0: one checkpoint, at the end
}
_LORA = {
    "r": (int, 8, 1, 256),
    "alpha": (float, 16.0, 0.0, 1024.0),  # > 0: scaling = alpha / r
    "dropout": (float, 0.0, 0.0, 0.9),
}
DEFAULT_TARGET_MODULES = ["*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj"]
_DPO = {
    "beta": (float, 0.1, 0.0, 10.0),  # > 0
    "label_smoothing": (float, 0.0, 0.0, 0.49),
}
_PPO = {
    "rollout_batch_size": (int, 8, 1, 512),
    "max_new_tokens": (int, 32, 1, 1024),
    "kl_coef": (float, 0.05, 0.0, 10.0),
    "ppo_epochs": (int, 2, 1, 16),
    "clip_range": (float, 0.2, 0.0, 1.0),  # > 0
    "temperature": (float, 1.0, 0.0, 5.0),  # > 0
}


def default_lr(kind: str, *, adapters: bool) -> float:
    return (_LR_ADAPTERS if adapters else _LR_ALL_WEIGHTS)[JobKind(kind)]


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


def _section(
    raw: Any, spec: dict, errors: dict, where: str, *, positive: tuple = (), other: tuple = ()
) -> dict:
    """A nested object of numbers (bounds as in `spec`, `positive` ones above 0) plus the
    `other` keys, which the caller checks; defaults filled in."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors[where] = ["must be an object"]
        return {}
    known = [*spec, *other]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        errors[where] = [f"unknown key(s) {', '.join(unknown)}; use {', '.join(known)}"]
        return {}
    # null takes the default, so the worker always finds every setting.
    numbers = {k: v for k, v in raw.items() if k in spec and v is not None}
    clean = _numbers(numbers, spec, errors, where)
    for name in positive:
        if name in clean and clean[name] <= 0:
            errors[f"{where}.{name}"] = ["must be greater than 0"]
    return clean


def _lora(raw: Any, errors: dict) -> dict:
    clean = _section(raw, _LORA, errors, "lora", positive=("alpha",), other=("target_modules",))
    targets = (raw if isinstance(raw, dict) else {}).get("target_modules", DEFAULT_TARGET_MODULES)
    if not (
        isinstance(targets, list)
        and targets
        and all(isinstance(t, str) and t.strip() for t in targets)
    ):
        errors["lora.target_modules"] = [
            "a non-empty list of module-name patterns, such as " + ", ".join(DEFAULT_TARGET_MODULES)
        ]
        targets = []
    return {**clean, "target_modules": list(targets)}


def _dpo(raw: Any, errors: dict) -> dict:
    clean = _section(raw, _DPO, errors, "dpo", positive=("beta",), other=("precompute_reference",))
    precompute = (raw if isinstance(raw, dict) else {}).get("precompute_reference", False)
    if not isinstance(precompute, bool):
        errors["dpo.precompute_reference"] = ["must be true or false"]
    return {**clean, "precompute_reference": precompute}


def validate_posttrain(project: Project, kind: str, params: dict[str, Any]) -> JobRequest:
    from controlplane.jobs.dispatch import training_queue

    kind = JobKind(kind)
    common = {"base_job_id", "dataset_version_id", "pairs_count", "train", "seed", "device"}
    errors: dict[str, list[str]] = {}
    # A key set to null counts as left out (its default applies).
    given = {name: value for name, value in params.items() if value is not None}
    # Settings of another kind get a message that says whose they are, not "unknown".
    if kind != JobKind.PPO and "reward_job_id" in given:
        errors["reward_job_id"] = ["only ppo jobs take a reward model"]
    if kind == JobKind.SFT and "lora" in given:
        errors["lora"] = ["sft trains all the weights; use kind lora or qlora to train adapters"]
    for section in ("dpo", "ppo"):
        if kind != section and section in given:
            errors[section] = [f"only {section} jobs take {section} settings"]
    known = common | {"reward_job_id", "lora", "dpo", "ppo"}
    errors.update({name: ["unknown parameter"] for name in params.keys() - known})

    base_files = _base_model(project, params.get("base_job_id"), errors)
    reward_files = []
    if kind == JobKind.PPO:
        reward_files = _reward_model(project, params.get("reward_job_id"), errors)
    version = pairs_count = None
    if params.get("dataset_version_id") is not None:
        version = _pairs_version(project, params["dataset_version_id"], kind, errors)
        if "pairs_count" in given:
            errors["pairs_count"] = [
                "only for the built-in pairs; leave it out when dataset_version_id is set"
            ]
    else:
        pairs_count = _number(
            given, "pairs_count", errors, kind=int, default=2000, low=16, high=100_000
        )

    adapters = kind in _ADAPTER_KINDS or (kind != JobKind.SFT and "lora" in given)
    train_spec = dict(_TRAIN, lr=(float, default_lr(kind, adapters=adapters), 1e-7, 1.0))
    train = _section(params.get("train"), train_spec, errors, "train")
    lora = _lora(params.get("lora"), errors) if adapters else None
    dpo = _dpo(params.get("dpo"), errors) if kind == JobKind.DPO else None
    ppo = None
    if kind == JobKind.PPO:
        ppo = _section(
            params.get("ppo"), _PPO, errors, "ppo", positive=("clip_range", "temperature")
        )
    seed = _number(given, "seed", errors, kind=int, default=1337, low=0, high=2**31 - 1)
    device = _choice(
        given, "device", errors, choices=_DEVICES, default="auto", message=_DEVICE_MESSAGE
    )
    if errors:
        raise JobRequestError(errors)

    clean: dict[str, Any] = {"base_job_id": params["base_job_id"]}
    named = [(f"base/{a.name.removeprefix('model/')}", a) for a in base_files]
    if kind == JobKind.PPO:
        clean["reward_job_id"] = params["reward_job_id"]
        named += [(f"reward/{a.name.removeprefix('reward/')}", a) for a in reward_files]
    if version is not None:
        clean["dataset_version_id"] = version.pk
        named += [(f"data/{f.name}", f) for f in pair_files(version).order_by("name", "id")]
    else:
        clean["pairs_count"] = pairs_count
    clean["train"] = train
    for section, value in (("lora", lora), ("dpo", dpo), ("ppo", ppo)):
        if value is not None:
            clean[section] = value
    clean.update(seed=seed, device=device, input_names=[name for name, _ in named])
    inputs = [{"uri": f.object_key, "sha256": f.sha256, "size": f.size} for _, f in named]
    return JobRequest(queue=training_queue(), params=clean, inputs=inputs)
