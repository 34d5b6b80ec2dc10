"""The registry's write side: models, versions, aliases, promotion requests, settings.

Every function is keyword-only, audits what it changes and raises a `RegistryError`
subclass (errors.py) carrying the HTTP status for what the caller can fix.

Registration is two steps so that no byte passes through the web process:
`version_register` writes rows only (the version in `registering`, its files with the
sha256 and size the worker reported, the lineage) and, once committed, asks the control
worker to run `finish_registration`, which copies each file server-side into the
version's own prefix, reads every copy back against the recorded sha256, reads the
architecture from the headers and makes the version `ready` (or `refused`). A broker
outage only delays that: `registry_sweep` (beat) finishes versions left registering.

Locks, in this order: the job row (the success hook runs under it), the model row
(version numbers, alias moves and promotion decisions of one model are serialised on
it), then the audit chain, last.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of
from controlplane.registry.errors import Conflict, InvalidRequest, NotAllowed, NotFound
from controlplane.registry.integrity import object_problem
from controlplane.registry.models import (
    ALIAS_PATTERN,
    DEFAULT_PROTECTED_ALIASES,
    FileRole,
    ModelAlias,
    ModelFile,
    ModelTask,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegisteredModel,
    RegistrySettings,
    SyncState,
    VersionState,
    alias_validator,
    model_name_validator,
)
from controlplane.registry.selectors import latest_evaluation, protected_aliases

logger = logging.getLogger(__name__)

# Job kinds that make a model, and the task of the model they make.
TEXT_KINDS = ("pretrain", "sft", "lora", "qlora", "reward", "dpo", "ppo")
VISION_KINDS = ("diffusion", "gan", "vae")
KIND_TASK = {
    **{kind: ModelTask.TEXT_GENERATION for kind in TEXT_KINDS},
    **{kind: ModelTask.IMAGE_GENERATION for kind in VISION_KINDS},
}
# What a text model's job publishes under model/, and the role of each file.
TEXT_MODEL_FILES = {
    "model.safetensors": FileRole.WEIGHTS,
    "config.json": FileRole.CONFIG,
    "tokenizer.json": FileRole.TOKENIZER,
}
CHECKPOINT_NAME = "checkpoint.pt"  # a vision version's one file
THRESHOLD_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}
_NEGATED = {"<=": ">", "<": ">=", ">=": "<", ">": "<="}
MAX_THRESHOLDS = 50
MAX_PROTECTED_ALIASES = 20
# A version registering for longer than this is finished by the beat's sweep.
REGISTRATION_GRACE = timedelta(seconds=30)
FINISH_TASK = "control.registry_finish_registration"
# How long the control worker rides out a store outage before leaving it to the sweep.
STORE_PATIENCE_SECONDS = 30.0


# -- helpers -------------------------------------------------------------------------


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidRequest("a model name is text", fields={"name": ["must be text"]})
    try:
        model_name_validator(name)
    except ValidationError as error:
        raise InvalidRequest(error.messages[0], fields={"name": error.messages}) from None
    return name


def _check_alias(alias: Any) -> str:
    if not isinstance(alias, str):
        raise InvalidRequest("an alias is text", fields={"alias": ["must be text"]})
    try:
        alias_validator(alias)
    except ValidationError as error:
        raise InvalidRequest(error.messages[0], fields={"alias": error.messages}) from None
    return alias


def _require_review(project, actor, doing: str) -> None:
    """Owner or compliance role by membership: a platform admin is no second pair of eyes
    unless they are a member in that role."""
    if not role_allows(role_of(actor, project), Action.REVIEW):
        raise NotAllowed(
            f"{doing} needs the owner or compliance role in this project "
            "(a membership role: being a platform admin is not enough)"
        )


def _known_alias_name(model, alias: Any) -> None:
    """NotFound for a name no alias can have (before it reaches a query: a NUL would 500)."""
    if not isinstance(alias, str) or not re.fullmatch(ALIAS_PATTERN, alias):
        raise NotFound(f"{model.name} has no alias @{alias}")


def _locked_model(model: RegisteredModel) -> RegisteredModel:
    return RegisteredModel.objects.select_for_update().select_related("project").get(pk=model.pk)


def _mlflow_pending(model: RegisteredModel) -> None:
    """MLflow's mirror of this model is out of date: reg-mlflow's reconciler picks it up."""
    RegisteredModel.objects.filter(pk=model.pk).update(
        mlflow_state=SyncState.PENDING, mlflow_next_attempt_at=None, updated_at=timezone.now()
    )
    model.mlflow_state = SyncState.PENDING


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def flat_figures(result: Any) -> dict[str, float]:
    """A job result's numbers, flat: top-level and `metrics` figures by their own name,
    other sections' as `section.name` (two levels); lists (files, samples) and text are
    left out."""
    figures: dict[str, float] = {}
    if not isinstance(result, dict):
        return figures

    def add(name: str, value: Any) -> None:
        number = _number(value)
        if number is not None:
            figures.setdefault(name[:100], number)

    for key, value in result.items():
        if not isinstance(value, dict):
            add(str(key), value)
            continue
        for name, item in value.items():
            prefix = "" if key == "metrics" else f"{key}."
            if isinstance(item, dict):
                for inner, number in item.items():
                    add(f"{prefix}{name}.{inner}", number)
            else:
                add(f"{prefix}{name}", item)
    return figures


# -- models --------------------------------------------------------------------------


def model_create(*, project, actor, name, task, description="") -> RegisteredModel:
    name = _check_name(name)
    if task not in ModelTask.values:
        raise InvalidRequest(
            f"task must be one of {', '.join(ModelTask.values)}",
            fields={"task": [f"use {' or '.join(ModelTask.values)}"]},
        )
    if RegisteredModel.objects.filter(project=project, name=name).exists():
        raise Conflict(f"a model named '{name}' already exists in this project")
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(
                project=project,
                name=name,
                task=task,
                description=description or "",
                created_by=actor,
            )
            audit_append(
                project=project,
                actor=actor,
                action="registered_model.created",
                artifact=model,
                payload={"name": name, "task": task},
            )
    except IntegrityError:
        raise Conflict(f"a model named '{name}' already exists in this project") from None
    return model


def check_thresholds(raw: Any) -> list[dict[str, Any]]:
    """[{metric, op, value}] with op one of <=, <, >=, > and a finite number value."""
    if not isinstance(raw, list):
        raise InvalidRequest(
            "promotion_thresholds must be a list",
            fields={"promotion_thresholds": ["must be a list of {metric, op, value}"]},
        )
    if len(raw) > MAX_THRESHOLDS:
        raise InvalidRequest(
            f"at most {MAX_THRESHOLDS} thresholds",
            fields={"promotion_thresholds": [f"at most {MAX_THRESHOLDS} thresholds"]},
        )
    clean, errors = [], {}
    for index, item in enumerate(raw):
        where = f"promotion_thresholds.{index}"
        if not isinstance(item, dict) or set(item) != {"metric", "op", "value"}:
            errors[where] = ["must be an object with exactly metric, op and value"]
            continue
        metric, op, value = item["metric"], item["op"], _number(item["value"])
        if not isinstance(metric, str) or not 1 <= len(metric) <= 100 or not metric.isprintable():
            errors[f"{where}.metric"] = ["must be a metric name of 1-100 characters"]
        if op not in THRESHOLD_OPS:
            errors[f"{where}.op"] = [f"use one of {', '.join(THRESHOLD_OPS)}"]
        if value is None:
            errors[f"{where}.value"] = ["must be a finite number"]
        if not any(k.startswith(where) for k in errors):
            clean.append({"metric": metric, "op": op, "value": value})
    if errors:
        raise InvalidRequest("the promotion thresholds are invalid", fields=errors)
    return clean


def model_update(*, model, actor, description=None, promotion_thresholds=None) -> RegisteredModel:
    changes: dict[str, Any] = {}
    if description is not None:
        if not isinstance(description, str):
            raise InvalidRequest("description must be text", fields={"description": ["text"]})
        changes["description"] = description
    if promotion_thresholds is not None:
        changes["promotion_thresholds"] = check_thresholds(promotion_thresholds)
    if not changes:
        return model
    with transaction.atomic():
        locked = _locked_model(model)
        before = {name: getattr(locked, name) for name in changes}
        for name, value in changes.items():
            setattr(locked, name, value)
        locked.mlflow_state = SyncState.PENDING
        locked.save(update_fields=[*changes, "mlflow_state", "updated_at"])
        audit_append(
            project=locked.project,
            actor=actor,
            action="registered_model.updated",
            artifact=locked,
            payload={"before": before, "after": changes},
        )
    return locked


# -- registration ----------------------------------------------------------------------


def _published(job, prefix: str) -> dict[str, Any]:
    """The latest upload of each output artifact under `prefix`, by name."""
    from controlplane.jobs.models import ArtifactKind

    latest: dict[str, Any] = {}
    for artifact in job.artifacts.filter(kind=ArtifactKind.OUTPUT, name__startswith=prefix):
        if artifact.name not in latest or artifact.pk > latest[artifact.name].pk:
            latest[artifact.name] = artifact
    return latest


def model_files_of(job) -> list[tuple[str, str, Any]]:
    """[(file name in the version, role, JobArtifact)]; InvalidRequest when there is no model."""
    from controlplane.jobs.models import ArtifactKind

    if job.kind in VISION_KINDS:
        checkpoint = (
            job.artifacts.filter(kind=ArtifactKind.CHECKPOINT, name__endswith=".pt")
            .order_by("-step", "-id")
            .first()
        )
        if checkpoint is None:
            raise InvalidRequest(
                f"job {job.pk} ({job.kind}) has no checkpoint (.pt) to register as its model"
            )
        return [(CHECKPOINT_NAME, FileRole.CHECKPOINT, checkpoint)]
    published = _published(job, "model/")
    missing = [name for name in TEXT_MODEL_FILES if f"model/{name}" not in published]
    if missing:
        raise InvalidRequest(
            f"job {job.pk} ({job.kind}) published no model "
            f"({', '.join('model/' + m for m in missing)} missing)"
        )
    return [
        (name, TEXT_MODEL_FILES.get(name, FileRole.OTHER), artifact)
        for full, artifact in sorted(published.items())
        if (name := full.removeprefix("model/")) and "/" not in name
    ]


def _job_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def lineage_of(job) -> tuple[list, list, dict[str, Any]]:
    """(jobs, dataset versions, graph) behind a job, transitively.

    Follows base_job_id / reward_job_id / dataset_version_id of each job, and each
    dataset version's parents and producing (pipeline) job. Edges point from what was
    used to what was made. Bounded: a corrupt cycle or a huge history cannot hang it.
    """
    from controlplane.datasets.models import DatasetVersion
    from controlplane.jobs.models import Job

    jobs: dict[int, Job] = {}
    versions: dict[int, DatasetVersion] = {}
    edges: set[tuple[str, str]] = set()
    job_queue: list[int] = [job.pk]
    version_queue: list[int] = []
    jobs_seen, versions_seen = {job.pk}, set()
    limit = 2000
    while (job_queue or version_queue) and len(jobs) + len(versions) < limit:
        if job_queue:
            ids = job_queue
            job_queue = []
            for item in Job.objects.filter(pk__in=ids, project_id=job.project_id):
                jobs[item.pk] = item
                params = item.params if isinstance(item.params, dict) else {}
                for field in ("base_job_id", "reward_job_id"):
                    used = _job_id(params.get(field))
                    if used is not None:
                        edges.add((f"job:{used}", f"job:{item.pk}"))
                        if used not in jobs_seen:
                            jobs_seen.add(used)
                            job_queue.append(used)
                used_version = _job_id(params.get("dataset_version_id"))
                if used_version is not None:
                    edges.add((f"dv:{used_version}", f"job:{item.pk}"))
                    if used_version not in versions_seen:
                        versions_seen.add(used_version)
                        version_queue.append(used_version)
            continue
        ids = version_queue
        version_queue = []
        found = (
            DatasetVersion.objects.filter(pk__in=ids, dataset__project_id=job.project_id)
            .select_related("dataset")
            .prefetch_related("parents")
        )
        for version in found:
            versions[version.pk] = version
            for parent in version.parents.all():
                edges.add((f"dv:{parent.pk}", f"dv:{version.pk}"))
                if parent.pk not in versions_seen:
                    versions_seen.add(parent.pk)
                    version_queue.append(parent.pk)
            if version.produced_by_id is not None:
                edges.add((f"job:{version.produced_by_id}", f"dv:{version.pk}"))
                if version.produced_by_id not in jobs_seen:
                    jobs_seen.add(version.produced_by_id)
                    job_queue.append(version.produced_by_id)
    nodes = [
        {
            "id": f"job:{item.pk}",
            "type": "job",
            "kind": item.kind,
            "label": f"{item.kind} job {item.pk}",
        }
        for item in sorted(jobs.values(), key=lambda j: j.pk)
    ] + [
        {
            "id": f"dv:{version.pk}",
            "type": "dataset_version",
            "dataset": version.dataset.slug,
            "number": version.number,
            "license": version.dataset.license,
            "source": version.dataset.source,
            "label": f"{version.dataset.slug} v{version.number}",
        }
        for version in sorted(versions.values(), key=lambda v: v.pk)
    ]
    known = {node["id"] for node in nodes}
    graph = {
        "nodes": nodes,
        "edges": sorted([a, b] for a, b in edges if a in known and b in known),
    }
    return (
        sorted(jobs.values(), key=lambda j: j.pk),
        sorted(versions.values(), key=lambda v: v.pk),
        graph,
    )


def version_register(
    *, project, actor, job, model_name, create_model=True, description=""
) -> ModelVersion:
    """A new version of `model_name` from a succeeded job, `registering` until the control
    worker has copied and verified its files (`finish_registration`)."""
    return _register(
        project=project,
        actor=actor,
        job=job,
        model_name=model_name,
        create_model=create_model,
        description=description,
        audit=audit_append,
    )


def _register(*, project, actor, job, model_name, create_model, description, audit):
    if job is None or job.project_id != project.pk:
        raise NotFound(f"job {getattr(job, 'pk', '?')} not found in this project")
    if job.kind not in KIND_TASK:
        raise InvalidRequest(
            f"job {job.pk} is a {job.kind} job, which makes no model; register a "
            f"{', '.join(KIND_TASK)} job"
        )
    if job.state != "succeeded":
        raise InvalidRequest(
            f"job {job.pk} is {job.state}; only a succeeded job's model can be registered"
        )
    files = model_files_of(job)
    name = _check_name(model_name)
    task = KIND_TASK[job.kind]
    with transaction.atomic():
        model = RegisteredModel.objects.select_for_update().filter(project=project, name=name)
        model = model.first()
        if model is None:
            if not create_model:
                raise NotFound(f"no model named '{name}' in this project")
            try:
                with transaction.atomic():
                    model = RegisteredModel.objects.create(
                        project=project, name=name, task=task, created_by=actor
                    )
                    audit(
                        project=project,
                        actor=actor,
                        action="registered_model.created",
                        artifact=model,
                        payload={"name": name, "task": task},
                    )
            except IntegrityError:
                pass  # created at the same moment by another registration: use it
            model = _locked_model(RegisteredModel.objects.get(project=project, name=name))
        if model.task != task:
            raise InvalidRequest(
                f"model '{name}' is a {model.task} model; job {job.pk} ({job.kind}) makes "
                f"{task} models"
            )
        earlier = (
            ModelVersion.objects.filter(model=model, source_job=job)
            .exclude(state__in=[VersionState.DELETED, VersionState.REFUSED])
            .first()
        )
        if earlier is not None:
            raise Conflict(f"job {job.pk} is already registered as {name} v{earlier.number}")
        number = model.last_version_number + 1
        RegisteredModel.objects.filter(pk=model.pk).update(last_version_number=number)
        model.last_version_number = number
        lineage_jobs, dataset_versions, graph = lineage_of(job)
        params = job.params if isinstance(job.params, dict) else {}
        base_job = _job_id(params.get("base_job_id"))
        base_version = None
        if base_job is not None:
            base_version = (
                ModelVersion.objects.filter(
                    model__project=project, source_job_id=base_job, state=VersionState.READY
                )
                .select_related("model")
                .order_by("-created_at", "-id")
                .first()
            )
        version = ModelVersion.objects.create(
            model=model,
            number=number,
            source_job=job,
            source_attempt=job.attempt,
            base_version=base_version,
            metrics=flat_figures(job.result),
            params=params,
            description=description or "",
            created_by=actor,
        )
        version.model = model
        node = {
            "id": f"mv:{version.pk}",
            "type": "model_version",
            "model": name,
            "number": number,
            "label": f"{name} v{number}",
        }
        graph["nodes"].append(node)
        graph["edges"].append([f"job:{job.pk}", node["id"]])
        if base_version is not None:
            graph["nodes"].append(
                {
                    "id": f"mv:{base_version.pk}",
                    "type": "model_version",
                    "model": base_version.model.name,
                    "number": base_version.number,
                    "label": f"{base_version.model.name} v{base_version.number}",
                }
            )
            graph["edges"].append([f"job:{base_job}", f"mv:{base_version.pk}"])
        version.lineage = graph
        version.save(update_fields=["lineage"])
        version.lineage_jobs.set(lineage_jobs)
        version.dataset_versions.set(dataset_versions)
        ModelFile.objects.bulk_create(
            ModelFile(
                version=version,
                name=file_name,
                role=role,
                source_key=artifact.object_key,
                object_key=version.object_prefix + file_name,
                sha256=artifact.sha256,
                size=artifact.size,
            )
            for file_name, role, artifact in files
        )
        _mlflow_pending(model)
        audit(
            project=project,
            actor=actor,
            action="model_version.registering",
            artifact=version,
            payload={
                "model": name,
                "number": number,
                "job_id": job.pk,
                "attempt": job.attempt,
                "files": {f[0]: {"sha256": f[2].sha256, "size": f[2].size} for f in files},
                "dataset_versions": [v.pk for v in dataset_versions],
            },
        )
        transaction.on_commit(lambda: request_finish(version.pk), robust=True)
    return version


def register_from_job(*, job, audit: Callable[..., None]) -> ModelVersion | None:
    """The `register_as` success hook, in the job's event transaction (under its row lock):
    the version's rows, audited through `audit` (the event batch's queue, appended after
    the job's own events). A registration that cannot be made is audited as
    `model_version.register_failed` with the reason; the job stays succeeded."""
    from controlplane.registry.errors import RegistryError

    name = job.params.get("register_as")
    actor = job.created_by
    queued: list[dict[str, Any]] = []

    def defer(*, project, actor, action, artifact, payload):
        queued.append({"action": action, "artifact": artifact, "payload": payload, "actor": actor})

    try:
        with transaction.atomic():
            version = _register(
                project=job.project,
                actor=actor,
                job=job,
                model_name=name,
                create_model=True,
                description="",
                audit=defer,
            )
    except RegistryError as error:
        logger.warning("job %s: register_as %r failed: %s", job.pk, name, error)
        audit(
            action="model_version.register_failed",
            artifact=job,
            payload={"model": name, "job_id": job.pk, "error": str(error)},
            actor=actor,
        )
        return None
    for item in queued:
        audit(**item)
    return version


def request_finish(version_id: int) -> None:
    """Ask the control worker to copy and verify; the beat's sweep covers a broker outage."""
    from controlplane.celery_app import app
    from workers.protocol import CONTROL_QUEUE

    try:
        app.send_task(FINISH_TASK, args=[version_id], queue=CONTROL_QUEUE, retry=False)
    except Exception as error:  # noqa: BLE001 - any broker failure; the sweep finishes it
        logger.warning("registration of version %s not sent: %s", version_id, error)


def _store():
    from controlplane.storage import object_store
    from workers.storage.retrying import RetryingObjectStore

    return RetryingObjectStore(object_store(), patience_seconds=STORE_PATIENCE_SECONDS)


def _copy_and_check(store, file: ModelFile) -> str | None:
    """Copy one file into the version's prefix (unless a copy is there) and read it back."""
    from workers.storage.errors import ObjectExistsError, ObjectNotFoundError

    if not store.exists(file.object_key):
        try:
            store.copy(file.source_key, file.object_key)
        except ObjectNotFoundError:
            return f"{file.name}: the job's {file.source_key} is missing from the object store"
        except ObjectExistsError:
            pass  # copied meanwhile; the read-back below decides
    problem = object_problem(store, file.object_key, sha256=file.sha256, size=file.size)
    return f"{file.name}: {problem}" if problem else None


def _architecture(store, files: list[ModelFile]) -> tuple[dict[str, Any], int | None]:
    from controlplane.registry.inspection import (
        checkpoint_summary,
        config_summary,
        safetensors_summary,
    )

    by_role = {f.role: f for f in files}
    if FileRole.CHECKPOINT in by_role:
        file = by_role[FileRole.CHECKPOINT]
        summary = checkpoint_summary(store, file.object_key, file.name)
        count = summary.pop("parameter_count")
        return {"format": "engine-vision-checkpoint", **summary}, count
    weights = by_role[FileRole.WEIGHTS]
    summary = safetensors_summary(store, weights.object_key, weights.name)
    count = summary.pop("parameter_count")
    architecture = {"format": "safetensors", **summary}
    if FileRole.CONFIG in by_role:
        config = by_role[FileRole.CONFIG]
        architecture["config"] = config_summary(store, config.object_key, config.name)
    return architecture, count


def finish_registration(version_id: int) -> ModelVersion:
    """Copy, verify and inspect a registering version's files; idempotent.

    The version row stays locked (SKIP LOCKED for anyone else) while this runs, so the
    task and the sweep never work on one version at once. A store outage raises and
    rolls back: the version stays registering and the sweep tries again. A file that
    does not match its record refuses the version: copies removed, audited.
    """
    from controlplane.registry.inspection import ModelFileError

    with transaction.atomic():
        version = (
            ModelVersion.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("model__project")
            .filter(pk=version_id, state=VersionState.REGISTERING)
            .first()
        )
        if version is None:
            return ModelVersion.objects.select_related("model").get(pk=version_id)
        store = _store()
        files = list(version.files.order_by("name"))
        problems = [p for f in files if (p := _copy_and_check(store, f)) is not None]
        architecture, count = {}, None
        if not problems:
            try:
                architecture, count = _architecture(store, files)
            except ModelFileError as error:
                problems.append(str(error))
        now = timezone.now()
        project = version.model.project
        if problems:
            store.delete_prefix(version.object_prefix)
            version.state = VersionState.REFUSED
            version.refused_reason = "; ".join(problems)[:5000]
            version.save(update_fields=["state", "refused_reason"])
            audit_append(
                project=project,
                actor=None,
                action="model_version.refused",
                artifact=version,
                payload={
                    "model": version.model.name,
                    "number": version.number,
                    "problems": problems,
                },
            )
        else:
            ModelFile.objects.filter(version=version).update(verified_at=now)
            version.state = VersionState.READY
            version.ready_at = now
            version.architecture = architecture
            version.parameter_count = count
            version.save(update_fields=["state", "ready_at", "architecture", "parameter_count"])
            audit_append(
                project=project,
                actor=None,
                action="model_version.registered",
                artifact=version,
                payload={
                    "model": version.model.name,
                    "number": version.number,
                    "parameter_count": count,
                    "files": {f.name: {"sha256": f.sha256, "size": f.size} for f in files},
                },
            )
        _mlflow_pending(version.model)
    return version


def registry_sweep(*, older_than: timedelta = REGISTRATION_GRACE, limit: int = 50) -> list[int]:
    """Finish versions left registering (a lost task message, a store outage); ids done."""
    due = list(
        ModelVersion.objects.filter(
            state=VersionState.REGISTERING, created_at__lt=timezone.now() - older_than
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    finished = []
    for version_id in due:
        try:
            version = finish_registration(version_id)
        except Exception:  # noqa: BLE001 - one version's outage must not stop the others
            logger.exception("finishing the registration of version %s failed", version_id)
            continue
        if version.state != VersionState.REGISTERING:
            finished.append(version_id)
    return finished


def version_update(*, version, actor, intended_use=None, limitations=None, description=None):
    changes = {
        name: value
        for name, value in (
            ("intended_use", intended_use),
            ("limitations", limitations),
            ("description", description),
        )
        if value is not None
    }
    for name, value in changes.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be text", fields={name: ["must be text"]})
    if not changes:
        return version
    if version.state == VersionState.DELETED:
        raise Conflict(f"{version.model.name} v{version.number} is deleted")
    with transaction.atomic():
        before = {name: getattr(version, name) for name in changes}
        ModelVersion.objects.filter(pk=version.pk).update(**changes)
        for name, value in changes.items():
            setattr(version, name, value)
        _mlflow_pending(version.model)
        audit_append(
            project=version.model.project,
            actor=actor,
            action="model_version.updated",
            artifact=version,
            payload={"number": version.number, "before": before, "after": changes},
        )
    return version


def version_delete(*, version, actor) -> ModelVersion:
    """A tombstone: the row stays (lineage, audit, numbers), its objects go. 409 while an
    alias points at it or it is still registering."""
    with transaction.atomic():
        model = _locked_model(version.model)
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        version.model = model
        label = f"{model.name} v{version.number}"
        if version.state == VersionState.DELETED:
            return version
        if version.state == VersionState.REGISTERING:
            raise Conflict(f"{label} is still registering; delete it once it is ready or refused")
        aliases = sorted(ModelAlias.objects.filter(version=version).values_list("name", flat=True))
        if aliases:
            raise Conflict(
                f"{label} is what {', '.join('@' + a for a in aliases)} points at; "
                "move or delete the alias first"
            )
        for request in PromotionRequest.objects.filter(
            version=version, state=PromotionState.PENDING
        ):
            _withdraw(request, actor, f"{label} was deleted")
        _store().delete_prefix(version.object_prefix)
        version.state = VersionState.DELETED
        version.deleted_at = timezone.now()
        version.save(update_fields=["state", "deleted_at"])
        _mlflow_pending(model)
        audit_append(
            project=model.project,
            actor=actor,
            action="model_version.deleted",
            artifact=version,
            payload={"model": model.name, "number": version.number},
        )
    return version


# -- aliases and promotion -------------------------------------------------------------


def evaluation_gate(*, version) -> list[str]:
    """What keeps `version` from a protected alias: [] when its latest finished evaluation
    passes every threshold of its model."""
    evaluation = latest_evaluation(version)
    label = f"v{version.number}"
    if evaluation is None:
        return [f"no finished evaluation of {label}; run an evaluate job on it first"]
    metrics = evaluation.metrics if isinstance(evaluation.metrics, dict) else {}
    problems = []
    for threshold in version.model.promotion_thresholds or []:
        metric, op, limit = threshold["metric"], threshold["op"], threshold["value"]
        rule = f"{metric} {op} {limit:g}"
        actual = _number(metrics.get(metric))
        if actual is None:
            problems.append(
                f"{metric} was not measured by evaluation {evaluation.pk} (threshold {rule})"
            )
        elif not THRESHOLD_OPS[op](actual, limit):
            problems.append(f"{metric} {actual:g} {_NEGATED[op]} {limit:g} (threshold {rule})")
    return problems


def _move(model, alias_name, version, actor, *, reason, rollback, request=None) -> ModelAlias:
    """Point the alias at `version` (the model row is locked by the caller) and audit it."""
    now = timezone.now()
    alias = ModelAlias.objects.select_for_update().filter(model=model, name=alias_name).first()
    previous = alias.version if alias is not None else None
    if alias is None:
        alias = ModelAlias.objects.create(
            model=model, name=alias_name, version=version, moved_by=actor, moved_at=now
        )
    else:
        alias.previous_version = previous
        alias.version = version
        alias.moved_by = actor
        alias.moved_at = now
        alias.save(update_fields=["previous_version", "version", "moved_by", "moved_at"])
    _mlflow_pending(model)
    audit_append(
        project=model.project,
        actor=actor,
        action="model_alias.moved",
        artifact=alias,
        payload={
            "model": model.name,
            "alias": alias_name,
            "previous_version": previous.number if previous is not None else None,
            "version": version.number,
            "reason": reason,
            "rollback": rollback,
            "promotion_request": request.pk if request is not None else None,
        },
    )
    return alias


def _withdraw(request: PromotionRequest, actor, reason: str) -> None:
    PromotionRequest.objects.filter(pk=request.pk, state=PromotionState.PENDING).update(
        state=PromotionState.WITHDRAWN,
        decided_by=actor,
        decided_at=timezone.now(),
        decision_reason=reason,
    )
    audit_append(
        project=request.model.project,
        actor=actor,
        action="promotion_request.withdrawn",
        artifact=request,
        payload={
            "model": request.model.name,
            "alias": request.alias,
            "version": request.version.number,
            "reason": reason,
        },
    )


def _ready_version_of(model, version) -> ModelVersion:
    if version is None or version.model_id != model.pk:
        raise NotFound(f"that version is not a version of {model.name}")
    if version.state != VersionState.READY:
        raise Conflict(
            f"{model.name} v{version.number} is {version.state}; only a ready version "
            "can be given an alias"
        )
    return version


def alias_set(*, model, actor, alias, version, reason="", is_rollback=False):
    """Move an unprotected alias now (-> ModelAlias); for a protected one, check the
    evaluation gate and open a promotion request (-> PromotionRequest)."""
    alias = _check_alias(alias)
    version = _ready_version_of(model, version)
    reason = reason or ""
    protected = alias in protected_aliases(model.project)
    if protected:
        problems = evaluation_gate(version=version)
        if problems:
            raise Conflict(
                f"cannot promote {model.name} v{version.number} to @{alias}: " + "; ".join(problems)
            )
    with transaction.atomic():
        locked = _locked_model(model)
        current = ModelAlias.objects.filter(model=locked, name=alias).first()
        if not protected:
            if current is not None and current.version_id == version.pk:
                return current
            return _move(locked, alias, version, actor, reason=reason, rollback=is_rollback)
        if current is not None and current.version_id == version.pk:
            raise Conflict(f"@{alias} already points at {model.name} v{version.number}")
        for pending in PromotionRequest.objects.filter(
            model=locked, alias=alias, state=PromotionState.PENDING
        ).select_related("model", "version"):
            _withdraw(pending, actor, f"replaced by a newer request for v{version.number}")
        request = PromotionRequest.objects.create(
            model=locked,
            alias=alias,
            version=version,
            from_version=current.version if current is not None else None,
            is_rollback=is_rollback,
            reason=reason,
            evaluation=latest_evaluation(version),
            requested_by=actor,
        )
        audit_append(
            project=locked.project,
            actor=actor,
            action="promotion_request.opened",
            artifact=request,
            payload={
                "model": locked.name,
                "alias": alias,
                "version": version.number,
                "from_version": current.version.number if current is not None else None,
                "rollback": is_rollback,
                "reason": reason,
                "evaluation": request.evaluation_id,
            },
        )
    return request


def alias_rollback(*, model, actor, alias, reason=""):
    """Point the alias back at the version it pointed at before (same rules as a move)."""
    _known_alias_name(model, alias)
    current = ModelAlias.objects.filter(model=model, name=alias).select_related("previous_version")
    current = current.first()
    if current is None:
        raise NotFound(f"{model.name} has no alias @{alias}")
    if current.previous_version is None:
        raise Conflict(f"@{alias} has no previous version to roll back to")
    return alias_set(
        model=model,
        actor=actor,
        alias=alias,
        version=current.previous_version,
        reason=reason or f"rollback of @{alias} to v{current.previous_version.number}",
        is_rollback=True,
    )


def alias_delete(*, model, actor, alias) -> None:
    """Remove an alias. A protected one only by an owner or compliance officer."""
    _known_alias_name(model, alias)
    if alias in protected_aliases(model.project):
        _require_review(model.project, actor, f"removing the protected alias @{alias}")
    with transaction.atomic():
        locked = _locked_model(model)
        current = ModelAlias.objects.filter(model=locked, name=alias).select_related("version")
        current = current.first()
        if current is None:
            raise NotFound(f"{model.name} has no alias @{alias}")
        number = current.version.number
        current.delete()
        _mlflow_pending(locked)
        audit_append(
            project=locked.project,
            actor=actor,
            action="model_alias.deleted",
            artifact=("modelalias", f"{locked.pk}:{alias}"),
            payload={"model": locked.name, "alias": alias, "version": number},
        )


def _decide(request, actor, reason, *, approve: bool) -> PromotionRequest:
    verb = "approving" if approve else "rejecting"
    project = request.model.project
    _require_review(project, actor, f"{verb} a promotion")
    if request.requested_by_id == actor.pk:
        raise NotAllowed(
            "you requested this promotion; a second owner or compliance officer must "
            f"{'approve' if approve else 'reject'} it"
        )
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest(
            f"{verb} a promotion needs a reason", fields={"reason": ["give a reason"]}
        )
    with transaction.atomic():
        model = _locked_model(request.model)
        request = PromotionRequest.objects.select_related("version", "model").get(pk=request.pk)
        request.model = model
        if request.state != PromotionState.PENDING:
            raise Conflict(f"this promotion request is already {request.state}")
        version = request.version
        if approve:
            if version.state != VersionState.READY:
                raise Conflict(f"{model.name} v{version.number} is {version.state} now")
            problems = evaluation_gate(version=version)
            if problems:
                raise Conflict(
                    f"cannot promote {model.name} v{version.number} to @{request.alias}: "
                    + "; ".join(problems)
                )
        state = PromotionState.APPROVED if approve else PromotionState.REJECTED
        now = timezone.now()
        claimed = PromotionRequest.objects.filter(
            pk=request.pk, state=PromotionState.PENDING
        ).update(state=state, decided_by=actor, decided_at=now, decision_reason=reason.strip())
        if claimed != 1:
            raise Conflict("this promotion request was decided meanwhile")
        request.state, request.decided_by, request.decided_at = state, actor, now
        request.decision_reason = reason.strip()
        audit_append(
            project=project,
            actor=actor,
            action=f"promotion_request.{state}",
            artifact=request,
            payload={
                "model": model.name,
                "alias": request.alias,
                "version": version.number,
                "requested_by": request.requested_by_id,
                "reason": request.decision_reason,
            },
        )
        if approve:
            _move(
                model,
                request.alias,
                version,
                actor,
                reason=request.reason,
                rollback=request.is_rollback,
                request=request,
            )
    return request


def promotion_approve(*, request, actor, reason) -> PromotionRequest:
    return _decide(request, actor, reason, approve=True)


def promotion_reject(*, request, actor, reason) -> PromotionRequest:
    return _decide(request, actor, reason, approve=False)


def promotion_withdraw(*, request, actor) -> PromotionRequest:
    if request.requested_by_id != actor.pk:
        raise NotAllowed("only the member who requested this promotion can withdraw it")
    with transaction.atomic():
        locked = PromotionRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state != PromotionState.PENDING:
            raise Conflict(f"this promotion request is already {locked.state}")
        _withdraw(request, actor, "withdrawn by the requester")
    request.refresh_from_db()
    return request


def registry_settings_update(*, project, actor, protected_aliases) -> RegistrySettings:
    names = protected_aliases
    if not isinstance(names, list) or len(names) > MAX_PROTECTED_ALIASES:
        raise InvalidRequest(
            "protected_aliases must be a list",
            fields={"protected_aliases": [f"a list of at most {MAX_PROTECTED_ALIASES} aliases"]},
        )
    errors = {}
    clean: list[str] = []
    for index, name in enumerate(names):
        try:
            name = _check_alias(name)
        except InvalidRequest as error:
            errors[f"protected_aliases.{index}"] = error.fields["alias"]
            continue
        if name not in clean:
            clean.append(name)
    if errors:
        raise InvalidRequest("the protected aliases are invalid", fields=errors)
    with transaction.atomic():
        row, _ = RegistrySettings.objects.select_for_update().get_or_create(
            project=project, defaults={"protected_aliases": list(DEFAULT_PROTECTED_ALIASES)}
        )
        before = list(row.protected_aliases)
        row.protected_aliases = clean
        row.updated_by = actor
        row.save()
        audit_append(
            project=project,
            actor=actor,
            action="registry_settings.updated",
            artifact=row,
            payload={"protected_aliases": {"before": before, "after": clean}},
        )
    return row
