"""Uploading a dataset version: start, complete, abort, and the reaper of what was left.

Protocol (browser and API alike; the bytes never pass through a web process when the
store is S3, and stream to disk when it is the embedded local store):

1. ``dataset_version_start`` checks every declared file (name, size, sha256, part size)
   *before* touching the store, then creates the version `uploading` with one multipart
   upload per file and returns presigned part URLs. If anything fails after the store
   opened an upload, that upload is aborted: no orphan parts.
2. The client PUTs each part to its URL and keeps the ETag the store answers.
3. ``dataset_version_complete`` claims the version (uploading -> assembling, one
   conditional UPDATE: exactly one request wins), closes each multipart upload, reads
   every object back to check size and sha256, and marks it `ready`. Any mismatch removes
   the version, audited with the reason. The same request sent again (a client retrying
   after a timeout) gets the same 200; a concurrent or different one gets a 409. A ready
   version is never touched by a `complete`.
4. ``dataset_version_abort`` (the client gives up) and ``dataset_uploads_reap`` (it went
   away, or the request assembling it died) claim the version for removal the same way, so
   an abort, a reap and a complete can race without harm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import urllib3
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from minio.error import ServerError

from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion, VersionState
from controlplane.datasets.orphans import multipart_orphans_abort
from controlplane.datasets.versioning import (
    DatasetError,
    version_claim_removal,
    version_mark_ready,
    version_number_take,
    version_remove,
    version_remove_claimed,
)
from controlplane.names import name_problem
from controlplane.policies.gates import enforce
from controlplane.policies.plans import upload_facts
from controlplane.policies.rules import Gate
from controlplane.storage import object_store
from workers.storage import StorageError

logger = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024**2  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024**3  # S3's maximum part size
MAX_PARTS = 10_000  # S3's maximum part count
DEFAULT_PART_SIZE = 64 * 1024**2
# A `complete` that has not finished by then is taken to have died with its request (a
# gunicorn timeout kills one long before); the reaper then removes the version.
ASSEMBLY_LEASE = timedelta(hours=1)
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _is_int(value: object) -> bool:
    # bool is an int subclass; `"part_size": true` is a client bug, not a size of 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _part_size_for(size: int, requested: object) -> int:
    part_size = DEFAULT_PART_SIZE if requested is None else requested
    if not _is_int(part_size) or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise DatasetError(
            f"part_size must be an integer from {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes",
            fields={"part_size": [f"an integer from {MIN_PART_SIZE} to {MAX_PART_SIZE}"]},
        )
    # Very large files: grow the parts so that they fit in S3's 10,000.
    grown = max(part_size, math.ceil(size / MAX_PARTS))
    if grown > MAX_PART_SIZE:
        raise DatasetError(
            f"a file of {size} bytes does not fit in {MAX_PARTS} parts of at most "
            f"{MAX_PART_SIZE} bytes",
            fields={"files": ["file too large for a multipart upload"]},
        )
    return grown


def _check_declared(files: list[DeclaredFile]) -> None:
    if not files:
        raise DatasetError(
            "declare at least one file", fields={"files": ["this list may not be empty"]}
        )
    for f in files:
        if not isinstance(f.name, str) or not f.name:
            raise DatasetError("every file needs a name", fields={"files": ["name missing"]})
        problem = name_problem(f.name, field=f"file name {f.name!r}")
        if problem:
            raise DatasetError(problem, fields={"files": [problem]})
        if not _is_int(f.size) or f.size <= 0:
            raise DatasetError(
                f"file '{f.name}' must have a positive integer size",
                fields={"files": [f"'{f.name}' has size {f.size!r}"]},
            )
        if not isinstance(f.sha256, str) or not _SHA256.fullmatch(f.sha256.lower()):
            raise DatasetError(
                "sha256 must be 64 hex digits",
                fields={"files": [f"'{f.name}': bad sha256"]},
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


def _declared(files: Iterable[DeclaredFile]) -> list[DeclaredFile]:
    from controlplane.uploads.services import display_filename

    checked = list(files)
    _check_declared(checked)  # the raw names: a bidi override is refused, not rewritten
    shown = [DeclaredFile(display_filename(f.name), f.size, f.sha256.lower()) for f in checked]
    if len({f.name for f in shown}) != len(shown):
        raise DatasetError(
            "file names must be unique in a version (after dropping folders)",
            fields={"files": ["duplicate name"]},
        )
    return shown


def dataset_version_start(
    *,
    dataset: Dataset,
    actor: User,
    files: list[DeclaredFile],
    part_size: int | None = None,
    note: str = "",
) -> tuple[DatasetVersion, list[PartUpload]]:
    files = _declared(files)
    # Every check before the store is touched: a refusal leaves nothing anywhere.
    part_sizes = [_part_size_for(f.size, part_size) for f in files]
    # The policy too (licence, source, where the store keeps the bytes): a refusal is
    # PolicyDenied, audited on the dataset, and no byte or row is written.
    enforce(
        project=dataset.project,
        gate=Gate.DATASET_UPLOAD,
        subject=lambda: upload_facts(dataset),
        actor=actor,
        artifact=dataset,
    )
    store = object_store()
    expires = timedelta(seconds=settings.DATASET_UPLOAD_TTL_SECONDS)
    opened: list[tuple[str, str]] = []
    try:
        location = store.location()
        with transaction.atomic():
            version = DatasetVersion.objects.create(
                dataset=dataset,
                number=version_number_take(dataset),
                created_by=actor,
                note=note,
                upload_expires_at=timezone.now() + expires,
                storage_bucket=location.bucket,
                storage_region=location.region,
            )
            uploads = []
            for index, (declared, size) in enumerate(zip(files, part_sizes, strict=True)):
                # Random, not numbered: keys are never reused, even after a version is removed.
                key = f"{version.prefix}upload/{index:05d}-{uuid.uuid4().hex}"
                upload_id = store.multipart_create(key)
                opened.append((key, upload_id))
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
    except BaseException as error:
        # The rows rolled back; the store has no transaction, so undo what it opened.
        _abort_quietly(opened)
        if isinstance(error, StorageError):
            raise DatasetError(
                f"the object store did not accept the upload ({error}); try again later",
                status=503,
            ) from error
        raise
    return version, uploads


def _abort_quietly(opened: list[tuple[str, str]]) -> None:
    store = object_store()
    for key, upload_id in opened:
        try:
            store.multipart_abort(key, upload_id)
        except Exception:  # noqa: BLE001 - the reaper's orphan sweep gets it later
            logger.warning("could not abort multipart upload %s of %s", upload_id, key)


def completion_digest(parts: dict[int, list[tuple[int, str]]]) -> str:
    """A fingerprint of a `complete` request: which parts (and ETags) made which file."""
    canonical = sorted(
        (file_id, sorted((number, etag.strip('"')) for number, etag in file_parts))
        for file_id, file_parts in parts.items()
    )
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def dataset_version_complete(
    *, version: DatasetVersion, actor: User, parts: dict[int, list[tuple[int, str]]]
) -> DatasetVersion:
    """Close the multipart uploads (parts: file id -> [(part number, etag)]) and verify.

    On any mismatch the version is removed and a `DatasetError` says which file was wrong.
    """
    digest = completion_digest(parts)
    files = list(version.files.all())
    _check_parts_listed(files, parts)
    claimed = DatasetVersion.objects.filter(pk=version.pk, state=VersionState.UPLOADING).update(
        state=VersionState.ASSEMBLING, upload_expires_at=timezone.now() + ASSEMBLY_LEASE
    )
    if claimed != 1:
        return _answer_unclaimed(version, digest)
    version.state = VersionState.ASSEMBLING
    try:
        problem = _assemble(files, parts)
    except StoreUnreachable as error:
        # Not the client's fault: give the claim back so the same `complete` can be sent
        # again. Files already assembled and checked are skipped then.
        DatasetVersion.objects.filter(pk=version.pk, state=VersionState.ASSEMBLING).update(
            state=VersionState.UPLOADING, upload_expires_at=version.upload_expires_at
        )
        version.state = VersionState.UPLOADING
        raise DatasetError(
            f"the object store could not be reached while assembling {error.file_name} "
            f"({error.__cause__}); send the same request again",
            status=503,
        ) from error
    if problem is not None:
        _remove_after_failure(version, actor, problem)
        raise DatasetError(f"upload failed and was removed: {problem}; start a new version")
    if not version_mark_ready(
        version,
        actor,
        action="dataset_version.uploaded",
        claimed_state=VersionState.ASSEMBLING,
        completion_digest=digest,
    ):
        # Our claim ran out and the reaper took the version over: what we assembled
        # belongs to nothing now.
        _delete_objects(files)
        raise DatasetError(
            f"version {version.number} took longer than {ASSEMBLY_LEASE} to assemble and "
            "was removed; start a new version",
            status=409,
        )
    return version


def _check_parts_listed(files: list[DatasetFile], parts: dict[int, list[tuple[int, str]]]):
    """Each open file lists its parts 1..N exactly once (N from its size and part size).

    A malformed list is the client's slip, found without touching the version: it can send
    the request again. Only what the store finds wrong with the bytes removes an upload.
    """
    missing = [f.name for f in files if f.upload_id and f.pk not in parts]
    if missing:
        raise DatasetError(
            f"no parts given for {', '.join(missing)}", fields={"files": ["parts missing"]}
        )
    for file in files:
        if not file.upload_id:
            continue
        expected = max(1, math.ceil(file.size / file.part_size)) if file.part_size else None
        numbers = sorted(number for number, _etag in parts[file.pk])
        if len(set(numbers)) != len(numbers) or (
            expected is not None and numbers != list(range(1, expected + 1))
        ):
            message = f"'{file.name}' needs parts 1 to {expected}, each once; got {numbers[:20]}"
            raise DatasetError(message, fields={"files": [message]})


def _answer_unclaimed(version: DatasetVersion, digest: str) -> DatasetVersion:
    """Another request or the reaper holds the version: say what became of it."""
    current = DatasetVersion.objects.filter(pk=version.pk).first()
    if current is None:
        raise DatasetError(f"version {version.number} was removed; start a new version", status=409)
    if current.state == VersionState.READY and current.completion_digest == digest:
        return current  # the same request again: the same answer
    if current.state == VersionState.READY:
        raise DatasetError(
            f"version {current.number} is already complete (with other parts)", status=409
        )
    if current.state == VersionState.ASSEMBLING:
        raise DatasetError(
            f"version {current.number} is being completed by another request; "
            "GET the version to see when it is ready",
            status=409,
        )
    if current.state == VersionState.REMOVING:
        raise DatasetError(
            f"version {current.number} is being removed ({current.removal_reason})", status=409
        )
    raise DatasetError(f"version {current.number} is {current.state}, not uploading", status=409)


def _assemble(files: list[DatasetFile], parts: dict[int, list[tuple[int, str]]]) -> str | None:
    """Close every open upload and check the bytes; the first problem found, or None."""
    store = object_store()
    for file in files:
        if not file.upload_id:
            continue
        try:
            # The store reads the assembled object back: size and sha256 are the bytes'.
            stored = store.multipart_complete(
                file.object_key, file.upload_id, sorted(parts[file.pk])
            )
        except Exception as error:  # noqa: BLE001 - any store refusal means the upload failed
            if _store_unreachable(error):
                raise StoreUnreachable(file.name) from error
            return f"'{file.name}' could not be assembled: {error}"
        DatasetFile.objects.filter(pk=file.pk).update(upload_id="")
        file.upload_id = ""
        if stored.size != file.size:
            return f"'{file.name}' has {stored.size} bytes, {file.size} were declared"
        if stored.sha256 != file.sha256:
            return f"'{file.name}' has sha256 {stored.sha256}, not the declared {file.sha256}"
    return None


class StoreUnreachable(Exception):
    """The store failed to answer (network, 5xx, disk): the parts may be perfectly fine."""

    def __init__(self, file_name: str):
        super().__init__(file_name)
        self.file_name = file_name


def _store_unreachable(error: BaseException) -> bool:
    """Whether the failure is the store's (worth a retry), not a refusal of the parts.

    The backends wrap what the SDK or the disk raised in StorageError and keep it as the
    cause: an OSError or urllib3 error is the network or the disk, minio's ServerError a 5xx
    that survived its retries; an S3 error code (InvalidPart, NoSuchUpload) is a refusal.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (OSError, urllib3.exceptions.HTTPError, ServerError)):
            return True
        seen = seen.__cause__
    return False


def _remove_after_failure(version: DatasetVersion, actor: User, problem: str) -> None:
    if not version_claim_removal(
        version, from_states=[VersionState.ASSEMBLING], reason=f"failed its checks: {problem}"
    ):
        return  # the reaper took it over already
    try:
        version_remove_claimed(version, actor=actor)
    except StorageError:
        # The caller learns its upload failed either way; the reaper finishes the removal.
        logger.exception("removing dataset version %s failed; the reaper retries", version.pk)


def _delete_objects(files: list[DatasetFile]) -> None:
    store = object_store()
    for file in files:
        try:
            store.delete(file.object_key)
        except StorageError:
            logger.exception("could not delete %s of a removed version", file.object_key)


def dataset_version_abort(*, version: DatasetVersion, actor: User) -> None:
    try:
        removed = version_remove(
            version,
            actor=actor,
            from_states=[VersionState.UPLOADING],
            reason="aborted by the uploader",
        )
    except StorageError as error:
        # Claimed: the version stays `removing` and the reaper finishes once its lease ends.
        raise DatasetError(
            f"version {version.number} is being removed, but the object store did not "
            f"answer ({error}); the removal is finished automatically",
            status=503,
        ) from error
    if not removed:
        current = DatasetVersion.objects.filter(pk=version.pk).first()
        state = current.state if current else "removed"
        raise DatasetError(
            f"version {version.number} is {state}; only an upload in progress can be aborted",
            status=409,
        )


_REAP_REASONS = {
    VersionState.UPLOADING: "upload abandoned: not completed before its deadline",
    VersionState.ASSEMBLING: "completion interrupted: the request assembling it died",
}


def dataset_uploads_reap(*, now: datetime | None = None) -> list[int]:
    """Remove versions past their deadline, then open uploads no version owns.

    A version still `uploading` after its TTL was abandoned; one `assembling` after its
    lease lost the request completing it; one `removing` after its lease lost its remover.
    """
    now = now or timezone.now()
    removed = []
    overdue = DatasetVersion.objects.filter(
        state__in=list(_REAP_REASONS) + [VersionState.REMOVING],
        upload_expires_at__lt=now,
        produced_by__isnull=True,
    ).order_by("pk")
    for version in overdue:
        reason = _REAP_REASONS.get(version.state, version.removal_reason)
        if not version_claim_removal(
            version, from_states=[version.state], reason=reason, expired_before=now
        ):
            continue  # completed or taken by someone else since we listed it
        try:
            if version_remove_claimed(version, actor=None):
                removed.append(version.pk)
        except StorageError:
            logger.exception("reaping dataset version %s failed; retried later", version.pk)
    try:
        multipart_orphans_abort(now=now)
    except StorageError:
        logger.exception("sweeping orphan multipart uploads failed; retried later")
    return removed
