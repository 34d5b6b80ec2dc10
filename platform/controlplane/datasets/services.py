"""Datasets and versions: create, upload (presigned multipart), complete, abort, reap.

Upload protocol (browser and API alike; the bytes never pass through a web process when
the store is S3, and stream to disk when it is the embedded local store):

1. ``dataset_version_start`` creates the version in state `uploading` and one multipart
   upload per declared file (name, size, sha256), and returns presigned part URLs.
2. The client PUTs each part to its URL and keeps the ETag the store answers.
3. ``dataset_version_complete`` closes each multipart upload, reads every object back to
   check its size and sha256 against what was declared, and marks the version `ready`.
   Any mismatch removes the version with all its objects: nothing half-written remains.
4. ``dataset_version_abort`` (the client gives up) and ``dataset_uploads_reap`` (it went
   away; run periodically) remove the version the same way.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion, VersionState
from controlplane.projects.models import Project
from controlplane.storage import object_store

MIN_PART_SIZE = 5 * 1024**2  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum part count
DEFAULT_PART_SIZE = 64 * 1024**2
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DatasetError(Exception):
    """A request the caller can fix; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, *, status: int = 400, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.fields = fields or {}


@dataclass(frozen=True)
class DeclaredFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PartUpload:
    file: DatasetFile
    part_size: int
    urls: list[str]  # urls[i] uploads part i + 1


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


def _part_size_for(size: int, requested: int | None) -> int:
    part_size = requested or DEFAULT_PART_SIZE
    if part_size < MIN_PART_SIZE:
        raise DatasetError(
            f"part_size must be at least {MIN_PART_SIZE} bytes", fields={"part_size": ["too small"]}
        )
    # Very large files: grow the parts so that they fit in S3's 10,000.
    return max(part_size, math.ceil(size / MAX_PARTS))


def _check_declared(files: list[DeclaredFile]) -> None:
    if not files:
        raise DatasetError(
            "declare at least one file", fields={"files": ["this list may not be empty"]}
        )
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise DatasetError(
            "file names must be unique in a version", fields={"files": ["duplicate name"]}
        )
    total = sum(f.size for f in files)
    if total > settings.UPLOAD_MAX_BYTES:
        raise DatasetError(
            f"the files hold {total} bytes; the limit is {settings.UPLOAD_MAX_BYTES}", status=413
        )
    for f in files:
        if f.size <= 0:
            raise DatasetError(
                f"file '{f.name}' is empty", fields={"files": [f"'{f.name}' has size 0"]}
            )
        if not _SHA256.match(f.sha256):
            raise DatasetError(
                "sha256 must be 64 lowercase hex digits",
                fields={"files": [f"'{f.name}': bad sha256"]},
            )


def _next_number(dataset: Dataset) -> int:
    # The dataset row is locked by the caller, so two uploads never get the same number.
    return (dataset.versions.aggregate(n=Max("number"))["n"] or 0) + 1


def dataset_version_start(
    *,
    dataset: Dataset,
    actor: User,
    files: list[DeclaredFile],
    part_size: int | None = None,
    note: str = "",
) -> tuple[DatasetVersion, list[PartUpload]]:
    from controlplane.uploads.services import display_filename

    files = [DeclaredFile(display_filename(f.name), f.size, f.sha256.lower()) for f in files]
    _check_declared(files)
    store = object_store()
    expires = timedelta(seconds=settings.DATASET_UPLOAD_TTL_SECONDS)
    with transaction.atomic():
        Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        version = DatasetVersion.objects.create(
            dataset=dataset,
            number=_next_number(dataset),
            created_by=actor,
            note=note,
            upload_expires_at=timezone.now() + expires,
        )
        uploads = []
        for index, declared in enumerate(files):
            # Random, not numbered: keys are never reused, even after a version is removed.
            key = f"{version.prefix}upload/{index:05d}-{uuid.uuid4().hex}"
            size = _part_size_for(declared.size, part_size)
            upload_id = store.multipart_create(key)
            row = DatasetFile.objects.create(
                version=version,
                name=declared.name,
                object_key=key,
                size=declared.size,
                sha256=declared.sha256,
                upload_id=upload_id,
                part_size=size,
            )
            n_parts = max(1, math.ceil(declared.size / size))
            urls = [
                store.presigned_part_url(key, upload_id, number, expires)
                for number in range(1, n_parts + 1)
            ]
            uploads.append(PartUpload(row, size, urls))
    return version, uploads


def _remove_version(version: DatasetVersion) -> None:
    """Abort open multipart uploads, delete every object, delete the rows."""
    store = object_store()
    for file in version.files.all():
        if file.upload_id:
            store.multipart_abort(file.object_key, file.upload_id)
        store.delete(file.object_key)
    with transaction.atomic():
        version.files.all().delete()
        version.parents.clear()
        version.delete()


def dataset_version_complete(
    *, version: DatasetVersion, actor: User, parts: dict[int, list[tuple[int, str]]]
) -> DatasetVersion:
    """Close the multipart uploads (parts: file id -> [(part number, etag)]) and verify.

    On any mismatch the version is removed and a `DatasetError` says which file was wrong.
    """
    if version.state != VersionState.UPLOADING:
        raise DatasetError(
            f"version {version.number} is {version.state}, not uploading", status=409
        )
    files = list(version.files.all())
    missing = [f.name for f in files if f.upload_id and f.pk not in parts]
    if missing:
        raise DatasetError(
            f"no parts given for {', '.join(missing)}", fields={"files": ["parts missing"]}
        )
    store = object_store()
    problem = None
    for file in files:
        if not file.upload_id:
            continue
        try:
            # The store reads the assembled object back: size and sha256 are the bytes'.
            stored = store.multipart_complete(
                file.object_key, file.upload_id, sorted(parts[file.pk])
            )
        except Exception as error:  # noqa: BLE001 - any store refusal means the upload failed
            problem = f"'{file.name}' could not be assembled: {error}"
            break
        DatasetFile.objects.filter(pk=file.pk).update(upload_id="")
        file.upload_id = ""
        size, sha256 = stored.size, stored.sha256
        if size != file.size:
            problem = f"'{file.name}' has {size} bytes, {file.size} were declared"
            break
        if sha256 != file.sha256:
            problem = f"'{file.name}' has sha256 {sha256}, not the declared {file.sha256}"
            break
    if problem is not None:
        _remove_version(version)
        raise DatasetError(f"upload failed and was removed: {problem}; start a new version")
    return _mark_ready(version, actor, action="dataset_version.uploaded")


def _mark_ready(
    version: DatasetVersion, actor: User | None, *, action: str, payload: dict | None = None
) -> DatasetVersion:
    with transaction.atomic():
        files = list(version.files.all())
        version.state = VersionState.READY
        version.ready_at = timezone.now()
        version.upload_expires_at = None
        version.byte_count = sum(f.size for f in files)
        version.save(update_fields=["state", "ready_at", "upload_expires_at", "byte_count"])
        audit_append(
            project=version.dataset.project,
            actor=actor,
            action=action,
            artifact=version,
            payload={
                "dataset_id": version.dataset_id,
                "number": version.number,
                "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in files],
                **(payload or {}),
            },
        )
    return version


def dataset_version_abort(*, version: DatasetVersion, actor: User) -> None:
    if version.state != VersionState.UPLOADING:
        raise DatasetError(
            f"version {version.number} is {version.state}; only an upload in progress can be aborted",
            status=409,
        )
    _remove_version(version)


def dataset_uploads_reap(*, now=None) -> list[int]:
    """Remove versions whose upload was abandoned (its deadline passed)."""
    now = now or timezone.now()
    removed = []
    for version in DatasetVersion.objects.filter(
        state=VersionState.UPLOADING, upload_expires_at__lt=now, produced_by__isnull=True
    ):
        removed.append(version.pk)
        _remove_version(version)
    return removed


def _role_of(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base.startswith("records-"):
        return "data"
    if base.startswith("report."):
        return "report"
    if base.startswith("subject_index"):
        return "index"
    if base == "tokenizer.json":
        return "tokenizer"
    if base.endswith(".bin"):
        return "shard"
    return "manifest" if base == "manifest.json" else "other"


def dataset_version_from_job(*, job, result: dict[str, Any]) -> DatasetVersion:
    """The version a data-pipeline job derived from its input version (in its transaction)."""
    source = DatasetVersion.objects.select_related("dataset__project").get(
        pk=job.params["dataset_version_id"]
    )
    dataset = Dataset.objects.select_for_update().get(pk=source.dataset_id)
    version = DatasetVersion.objects.create(
        dataset=dataset,
        number=_next_number(dataset),
        produced_by=job,
        created_by=job.created_by,
        note=f"cleaned and tokenized from v{source.number} by job {job.pk}",
        record_count=result.get("records"),
        report=result.get("report"),
        preview=result.get("preview"),
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
    return _mark_ready(
        version,
        None,
        action="dataset_version.derived",
        payload={"job_id": job.pk, "parent_version_id": source.pk},
    )
