"""Datasets and their versions: create a dataset, derive a version from a pipeline job.

Uploading a version (start, complete, abort, reap) is `upload.py`; what every way of
making or removing a version shares (numbers, readiness, audited removal) is
`versioning.py`. Both are re-exported here, the app's one entry point for callers.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from controlplane.audit.services import audit_append
from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion, FileRole
from controlplane.datasets.upload import (
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    DeclaredFile,
    PartUpload,
    dataset_uploads_reap,
    dataset_version_abort,
    dataset_version_complete,
    dataset_version_start,
)
from controlplane.datasets.versioning import (
    DatasetError,
    version_mark_ready,
    version_number_take,
)
from controlplane.names import name_problem
from controlplane.projects.models import Project
from controlplane.storage import object_store

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "DatasetError",
    "DeclaredFile",
    "PartUpload",
    "EDITABLE_FIELDS",
    "dataset_create",
    "dataset_update",
    "dataset_uploads_reap",
    "dataset_version_abort",
    "dataset_version_complete",
    "dataset_version_from_job",
    "dataset_version_start",
]


def dataset_create(
    *,
    project: Project,
    actor: User,
    name: str,
    slug: str,
    kind: str,
    description: str = "",
    source: str = "",
    license: str = "",
    subject_field: str = "",
) -> Dataset:
    problem = name_problem(name)
    if problem:
        raise DatasetError(problem, fields={"name": [problem]})
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                project=project,
                name=name,
                slug=slug,
                kind=kind,
                description=description,
                source=source,
                license=license,
                subject_field=subject_field,
                created_by=actor,
            )
            audit_append(
                project=project,
                actor=actor,
                action="dataset.created",
                artifact=dataset,
                payload={
                    "slug": slug,
                    "kind": kind,
                    "license": license,
                    "has_personal_data": bool(subject_field),
                },
            )
    except IntegrityError:
        raise DatasetError(
            f"a dataset with slug '{slug}' already exists in this project", status=409
        ) from None
    return dataset


# What may change once a dataset exists: how it is described (a wrong licence or source is
# corrected here). Name, slug and kind are what jobs and links refer to, and the subject
# field decides what the pipeline indexes for erasure: those stay as created.
EDITABLE_FIELDS = ("description", "source", "license")


def dataset_update(*, dataset: Dataset, actor: User, **changes: str) -> Dataset:
    """Change a dataset's descriptive fields (EDITABLE_FIELDS).

    Only fields whose value differs are written, and the `dataset.updated` audit event
    holds each of them as {field: {"before", "after"}}; a change to nothing records nothing.
    """
    unknown = sorted(set(changes) - set(EDITABLE_FIELDS))
    if unknown:
        editable = ", ".join(EDITABLE_FIELDS)
        raise DatasetError(
            f"{', '.join(unknown)} cannot be changed; a dataset's {editable} can",
            fields={
                name: [f"not editable; the editable fields are {editable}"] for name in unknown
            },
        )
    for name, value in changes.items():
        problem = _text_problem(name, value)
        if problem:
            raise DatasetError(problem, fields={name: [problem]})
    with transaction.atomic():
        # Locked, so that `before` is what this change replaced, not what a concurrent
        # edit had already replaced.
        locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
        diff = {
            name: {"before": getattr(locked, name), "after": value}
            for name, value in changes.items()
            if getattr(locked, name) != value
        }
        if not diff:
            return dataset
        for name, change in diff.items():
            setattr(locked, name, change["after"])
            setattr(dataset, name, change["after"])
        locked.save(update_fields=list(diff))
        audit_append(
            project=dataset.project,
            actor=actor,
            action="dataset.updated",
            artifact=locked,
            payload=diff,
        )
    return dataset


def _text_problem(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be text"
    if "\x00" in value:
        return f"{name} may not contain NUL characters"
    limit = Dataset._meta.get_field(name).max_length
    if limit is not None and len(value) > limit:
        return f"{name} has {len(value)} characters; at most {limit} are kept"
    return None


def _role_of(name: str) -> FileRole:
    base = name.rsplit("/", 1)[-1]
    if base.startswith("records-"):
        return FileRole.DATA
    if base.startswith("report."):
        return FileRole.REPORT
    if base.startswith("subject_index"):
        return FileRole.INDEX
    if base == "tokenizer.json":
        return FileRole.TOKENIZER
    if base.endswith(".bin"):
        return FileRole.SHARD
    return FileRole.MANIFEST if base == "manifest.json" else FileRole.OTHER


def dataset_version_from_job(*, job, result: dict[str, Any]) -> DatasetVersion:
    """The version a data-pipeline job derived from its input version (in its transaction)."""
    source = DatasetVersion.objects.select_related("dataset__project").get(
        pk=job.params["dataset_version_id"]
    )
    dataset = Dataset.objects.get(pk=source.dataset_id)
    # The job wrote its files to the store the platform is configured with; its location
    # was looked up when the store was built (controlplane/storage.py), so applying the
    # job's events under the job's lock waits on no request to the store here.
    location = object_store().location()
    version = DatasetVersion.objects.create(
        dataset=dataset,
        number=version_number_take(dataset),
        produced_by=job,
        created_by=job.created_by,
        note=f"cleaned and tokenized from v{source.number} by job {job.pk}",
        record_count=result.get("records"),
        report=result.get("report"),
        preview=result.get("preview"),
        storage_bucket=location.bucket,
        storage_region=location.region,
    )
    version.parents.add(source)
    DatasetFile.objects.bulk_create(
        DatasetFile(
            version=version,
            name=f["name"],
            role=_role_of(f["name"]),
            object_key=f["key"],
            size=f["size"],
            sha256=f["sha256"],
        )
        for f in result.get("files", [])
    )
    version_mark_ready(
        version,
        None,
        action="dataset_version.derived",
        payload={"job_id": job.pk, "parent_version_id": source.pk},
    )
    return version
