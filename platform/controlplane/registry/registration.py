"""Registering a version: rows first, then the files copied and verified off the web
process.

`version_register` only checks the job and writes rows (the version in `registering`,
its files with the sha256 and size the worker reported, the lineage); once committed it
asks the control worker to run `finish_registration`, which copies each file
server-side into the version's own prefix, reads every copy back against the recorded
sha256, reads the architecture from the headers and makes the version `ready` (or
`refused`: copies removed, audited). A broker outage only delays that:
`registry_sweep` (beat) finishes versions left registering.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.registry.errors import Conflict, InvalidRequest, NotFound
from controlplane.registry.integrity import object_problem
from controlplane.registry.lineage import flat_figures, job_id_of, lineage_of, model_files_of
from controlplane.registry.models import (
    FileRole,
    ModelFile,
    ModelVersion,
    RegisteredModel,
    VersionState,
)
from controlplane.registry.rules import (
    KIND_TASK,
    check_model_name,
    locked_model,
    mark_mlflow_pending,
    new_model,
)

logger = logging.getLogger(__name__)

# A version registering for longer than this is finished by the beat's sweep.
REGISTRATION_GRACE = timedelta(seconds=30)
FINISH_TASK = "control.registry_finish_registration"
# How long the control worker rides out a store outage before leaving it to the sweep.
STORE_PATIENCE_SECONDS = 30.0


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
    if job.kind == "reward":
        raise InvalidRequest(
            f"job {job.pk} is a reward job: its reward model scores text and generates "
            "none; register the ppo (or dpo, sft) policy trained with it"
        )
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
    name = check_model_name(model_name)
    task = KIND_TASK[job.kind]
    with transaction.atomic():
        model = RegisteredModel.objects.select_for_update().filter(project=project, name=name)
        model = model.first()
        if model is None:
            if not create_model:
                raise NotFound(f"no model named '{name}' in this project")
            try:
                new_model(project=project, actor=actor, name=name, task=task, audit=audit)
            except IntegrityError:
                pass  # created at the same moment by another registration: use it
            model = locked_model(RegisteredModel.objects.get(project=project, name=name))
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
        base_job = job_id_of(params.get("base_job_id"))
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
        mark_mlflow_pending(model)
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
    # After the version's lock is released: locking the model row while holding the
    # version's would invert the order version_delete takes them in (model, then version).
    mark_mlflow_pending(version.model)
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
    from workers.storage.retrying import StorageUnavailableError

    finished = []
    for version_id in due:
        try:
            version = finish_registration(version_id)
        except StorageUnavailableError as error:
            # The store stayed down for the whole patience: the next sweep tries again,
            # instead of this one waiting that long for every version.
            logger.warning("registry sweep stopped: %s", error)
            break
        except Exception:  # noqa: BLE001 - one version's failure must not stop the others
            logger.exception("finishing the registration of version %s failed", version_id)
            continue
        if version.state != VersionState.REGISTERING:
            finished.append(version_id)
    return finished
