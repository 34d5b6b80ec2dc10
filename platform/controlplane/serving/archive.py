"""The inference archive, platform side: index what replicas wrote, read it back, purge it.

Replicas (workers/serve/archive.py) write one object per window, JSONL with one gzip
member per record, then send its `ArchiveIndex` to the control queue; `ingest_index`
turns that into one ArchiveObject row and one InferenceRecord row per request. A record
is read with one ranged GET of its member (`read_record`); searches run on the index rows
alone (`search`); `export_lines` streams full records as JSONL.

Invariants:
- Ingest is idempotent: object_key and request_id are unique, conflicts are ignored, so a
  redelivered message (the control queue is at-least-once) changes nothing.
- An index is trusted only as far as its sender may write: the deployment must belong to
  the project, and the object key must lie in that deployment's archive folder
  (`archive_prefix`): a node cannot make the platform index, read or purge another
  project's objects.
- Purge deletes the object (every stored version) BEFORE its rows: a crash in between
  leaves rows whose object is gone, which the next run deletes; the opposite order could
  leave data nobody can find any more. A missing object is fine (repeatable).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from controlplane import subject_keys
from controlplane.audit.services import audit_append
from controlplane.policies.gates import record_allowed
from controlplane.policies.model_gates import check_retention
from controlplane.projects.models import Project
from controlplane.registry.models import ModelVersion
from controlplane.serving.models import (
    DEFAULT_RETENTION_DAYS,
    MAX_RETENTION_DAYS,
    ArchiveObject,
    Deployment,
    InferenceRecord,
    ServingSettings,
)
from controlplane.storage import object_store
from workers.serve.protocol import ArchiveIndex, Endpoint, RecordStatus
from workers.storage import (
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
    validate_key,
)

log = logging.getLogger(__name__)

PURGE_TASK = "control.serve_purge_archive"
# Objects purged per batch (one store delete each, then one transaction for their rows).
PURGE_BATCH = 2000
# Day folders swept for objects no index points at (an index lost with a broker outage, a
# put whose answer was lost): a folder is swept once it is SWEEP_MARGIN_DAYS past the
# cutoff, and the sweep looks SWEEP_DAYS back from there (purge runs hourly).
SWEEP_MARGIN_DAYS = 2
SWEEP_DAYS = 7
# An export reads a whole object when it needs several of its records and it is this small.
EXPORT_WHOLE_OBJECT_BYTES = 16 * 1024 * 1024
EXPORT_CHUNK = 500
_ENDPOINTS = frozenset(e.value for e in Endpoint)
_STATUSES = frozenset(s.value for s in RecordStatus)


class RecordUnavailable(Exception):
    """A record's bytes cannot be read: purged (gone) or the store is down."""

    def __init__(self, message: str, *, gone: bool):
        super().__init__(message)
        self.gone = gone


def archive_prefix(project_id: int, deployment_id: int) -> str:
    return f"projects/{project_id}/inference/{deployment_id}/"


# -- ingest ------------------------------------------------------------------------------


def ingest_index(payload: dict) -> ArchiveObject | None:
    """Record one archive object and its requests; a redelivery changes nothing.

    A payload that cannot be trusted (malformed, unknown deployment, foreign key) is logged
    and dropped: returning None, never raising, so the control worker is never stuck on it.
    """
    try:
        index = ArchiveIndex.from_dict(payload)
        project_id, deployment_id = int(index.project_id), int(index.deployment_id)
        window_start = _when(index.window_start)
        window_end = _when(index.window_end)
        size = int(index.size)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, OSError) as error:
        log.warning("archive index dropped: malformed payload (%s)", error)
        return None
    deployment = Deployment.objects.filter(pk=deployment_id, project_id=project_id).first()
    if deployment is None:
        log.warning(
            "archive index of %r dropped: no deployment %s in project %s",
            index.object_key,
            deployment_id,
            project_id,
        )
        return None
    key = index.object_key
    if not _key_in_folder(key, archive_prefix(project_id, deployment_id)):
        log.warning("archive index dropped: %r is outside deployment %s's folder", key, deployment)
        return None
    if len(key) > ArchiveObject._meta.get_field("object_key").max_length:
        log.warning("archive index dropped: object key too long (%d chars)", len(key))
        return None
    versions = set(
        ModelVersion.objects.filter(
            model_id=deployment.model_id,
            pk__in={e.version_id for e in index.records if isinstance(e.version_id, int)},
        ).values_list("pk", flat=True)
    )
    rows, refused = [], 0
    for entry in index.records:
        row = _record_row(entry, size, versions)
        if row is None:
            refused += 1
        else:
            rows.append(row)
    if refused:
        log.warning("archive index of %s: %d malformed entries dropped", key, refused)
    with transaction.atomic():
        archived, created = ArchiveObject.objects.get_or_create(
            object_key=key,
            defaults={
                "project_id": project_id,
                "deployment": deployment,
                "replica_id": str(index.replica_id)[:32],
                "window_start": window_start,
                "window_end": window_end,
                "size": max(0, size),
                "records": len(rows),
            },
        )
        if not created and archived.deployment_id != deployment.pk:
            log.warning("archive index dropped: %s is indexed for another deployment", key)
            return None
        for row in rows:
            row.project_id = project_id
            row.deployment = deployment
            row.archive_object = archived
        InferenceRecord.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return archived


def _key_in_folder(key, folder: str) -> bool:
    """A valid key (no '..' or empty parts: the store would refuse to delete it) in `folder`."""
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return key.startswith(folder)


def _record_row(entry, object_size: int, versions: set[int]) -> InferenceRecord | None:
    """The index row of one entry, or None when the entry is not well-formed."""
    try:
        ok = (
            isinstance(entry.id, str)
            and 0 < len(entry.id) <= 32
            and entry.endpoint in _ENDPOINTS
            and entry.status in _STATUSES
            and entry.version_id in versions
            and _count(entry.offset) is not None
            and _count(entry.length)
            and entry.offset + entry.length <= object_size
        )
        if not ok:
            return None
        return InferenceRecord(
            request_id=entry.id,
            version_id=entry.version_id,
            offset=entry.offset,
            length=entry.length,
            created_at=_when(entry.time),
            endpoint=entry.endpoint,
            status=entry.status,
            token_id=_small_int(entry.token_id),
            user_id=_small_int(entry.user_id),
            subject_hash=entry.subject_hash if _is_hash(entry.subject_hash) else "",
            prompt_tokens=_count(entry.prompt_tokens) or 0,
            completion_tokens=_count(entry.completion_tokens) or 0,
            latency_ms=_finite(entry.latency_ms) or 0.0,
            first_token_ms=_finite(entry.first_token_ms),
        )
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _when(seconds) -> dt.datetime:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"a time must be unix seconds, got {seconds!r}")
    return dt.datetime.fromtimestamp(float(seconds), dt.UTC)


def _count(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        return None
    return value


def _small_int(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        return None
    return value


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _is_hash(value) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


# -- reads --------------------------------------------------------------------------------


def read_record(entry: InferenceRecord, *, store: ObjectStore | None = None) -> dict:
    """The full archived record of one index row: one ranged GET, one gunzip."""
    store = store or object_store()
    key = entry.archive_object.object_key
    try:
        data = store.get_range(key, entry.offset, entry.length)
    except ObjectNotFoundError:
        raise RecordUnavailable(
            f"request {entry.request_id} is no longer in the archive (purged)", gone=True
        ) from None
    except StorageError as error:
        log.warning("archive read of %s failed: %s", entry.request_id, error)
        raise RecordUnavailable(
            "the archive's object store is not answering; try again shortly", gone=False
        ) from None
    return _decode(entry.request_id, data)


def _decode(request_id: str, member: bytes) -> dict:
    try:
        record = json.loads(gzip.decompress(member))
    except (OSError, EOFError, ValueError) as error:
        raise RecordUnavailable(
            f"request {request_id}'s archived bytes are damaged ({error})", gone=False
        ) from None
    if not isinstance(record, dict) or record.get("id") != request_id:
        raise RecordUnavailable(
            f"the archive holds another record where request {request_id} should be",
            gone=False,
        )
    return record


def record_in(deployment: Deployment, request_id: str) -> InferenceRecord | None:
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 32:
        return None
    return (
        InferenceRecord.objects.select_related("archive_object", "version")
        .filter(deployment=deployment, request_id=request_id)
        .first()
    )


def hash_subject(project: Project, subject: str) -> str:
    """The subject's hash under the project's current key (what new rows hold)."""
    return subject_keys.subject_hash(project, subject)


def search(
    deployment: Deployment,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    token_id: int | None = None,
    user_id: int | None = None,
    subject: str | None = None,
    status: str | None = None,
    endpoint: str | None = None,
) -> QuerySet[InferenceRecord]:
    """The deployment's index rows, newest first, narrowed by each filter given.

    `subject` is the raw identifier (an e-mail address, a customer id): it is hashed with
    the project's key, as the replicas hashed X-Data-Subject, and matched on the hash; on
    the hash under each older key generation too, after a rotation (controlplane.subject_keys).
    """
    rows = InferenceRecord.objects.filter(deployment=deployment).select_related("version")
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    if token_id is not None:
        rows = rows.filter(token_id=token_id)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    if subject:
        # Rows archived before a key rotation hold the hash under the key of their time.
        hashes = subject_keys.subject_hashes(deployment.project, subject)
        rows = rows.filter(subject_hash__in=hashes)
    if status:
        rows = rows.filter(status=status)
    if endpoint:
        rows = rows.filter(endpoint=endpoint)
    return rows.order_by("-created_at", "-id")


def export_lines(
    queryset: QuerySet[InferenceRecord], *, store: ObjectStore | None = None
) -> Iterator[str]:
    """Full records of the rows, one JSON line each, in the queryset's order; streamed.

    Rows are read EXPORT_CHUNK at a time; an object that holds several of a chunk's records
    is fetched once (when small), any other record with one ranged GET. A record whose
    object has been purged meanwhile is skipped (and logged).
    """
    store = store or object_store()
    rows = queryset.values_list(
        "request_id", "offset", "length", "archive_object__object_key", "archive_object__size"
    )
    chunk: list[tuple] = []
    for row in rows.iterator(chunk_size=EXPORT_CHUNK):
        chunk.append(row)
        if len(chunk) >= EXPORT_CHUNK:
            yield from _export_chunk(chunk, store)
            chunk = []
    if chunk:
        yield from _export_chunk(chunk, store)


def _export_chunk(chunk: list[tuple], store: ObjectStore) -> Iterator[str]:
    per_object: dict[str, int] = {}
    for _id, _offset, _length, key, _size in chunk:
        per_object[key] = per_object.get(key, 0) + 1
    whole: dict[str, bytes | None] = {}
    for request_id, offset, length, key, size in chunk:
        try:
            if per_object[key] > 1 and size <= EXPORT_WHOLE_OBJECT_BYTES:
                if key not in whole:
                    whole[key] = _get_whole(store, key)
                data = whole[key]
                if data is None:
                    continue
                member = data[offset : offset + length]
            else:
                member = store.get_range(key, offset, length)
            record = _decode(request_id, member)
        except (ObjectNotFoundError, RecordUnavailable) as error:
            log.warning("export: request %s skipped: %s", request_id, error)
            continue
        yield json.dumps(record, ensure_ascii=False) + "\n"


def _get_whole(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key, max_size=EXPORT_WHOLE_OBJECT_BYTES)
    except ObjectNotFoundError:
        log.warning("export: %s is gone (purged meanwhile)", key)
        return None


# -- retention ------------------------------------------------------------------------------


def retention_days_of(project: Project) -> int:
    row = ServingSettings.objects.filter(project=project).only("retention_days").first()
    return row.retention_days if row is not None else DEFAULT_RETENTION_DAYS


def serving_settings_update(*, project: Project, actor, retention_days: int) -> ServingSettings:
    if (
        isinstance(retention_days, bool)
        or not isinstance(retention_days, int)
        or not 1 <= retention_days <= MAX_RETENTION_DAYS
    ):
        raise ValueError(f"retention_days must be a whole number from 1 to {MAX_RETENTION_DAYS}")
    # The policy's retention range (rule 6) before the transaction: a refusal's audit
    # event commits.
    policy = check_retention(project=project, actor=actor, retention_days=retention_days)
    with transaction.atomic():
        row, _created = ServingSettings.objects.select_for_update().get_or_create(project=project)
        previous = row.retention_days if not _created else DEFAULT_RETENTION_DAYS
        row.retention_days = retention_days
        row.updated_by = actor
        row.save(update_fields=["retention_days", "updated_by", "updated_at"])
        audit_append(
            project=project,
            actor=actor,
            action="serving_settings.updated",
            artifact=row,
            payload={"retention_days": retention_days, "previous_retention_days": previous},
        )
        record_allowed(policy, project=project, actor=actor, artifact=row)
    return row


@dataclass
class PurgeCounts:
    objects: int = 0
    records: int = 0
    versions: int = 0  # stored object versions deleted (S3 keeps several per key)
    orphans: int = 0  # objects no index pointed at, swept from old day folders


def purge_expired(
    now: dt.datetime | None = None, *, store: ObjectStore | None = None
) -> dict[int, PurgeCounts]:
    """Delete every archive object (all versions) and index row older than its project's
    retention; one audit event per project (per PURGE_BATCH objects) with the counts."""
    now = now or timezone.now()
    store = store or object_store()
    done: dict[int, PurgeCounts] = {}
    project_ids = set(ArchiveObject.objects.values_list("project_id", flat=True).distinct())
    project_ids |= set(Deployment.objects.values_list("project_id", flat=True).distinct())
    for project in Project.objects.filter(pk__in=project_ids).order_by("pk"):
        try:
            counts = _purge_project(project, now, store)
        except StorageError as error:  # the next hourly run goes on from where this stopped
            log.warning("archive purge of project %s stopped: %s", project.pk, error)
            continue
        if counts.objects or counts.records or counts.orphans:
            done[project.pk] = counts
    return done


def _purge_project(project: Project, now: dt.datetime, store: ObjectStore) -> PurgeCounts:
    retention = retention_days_of(project)
    cutoff = now - dt.timedelta(days=retention)
    total = PurgeCounts()
    while True:
        batch = list(
            ArchiveObject.objects.filter(project=project, window_end__lt=cutoff)
            .order_by("window_end", "pk")
            .values_list("pk", "object_key")[:PURGE_BATCH]
        )
        if not batch:
            break
        versions = sum(store.delete(key) for _pk, key in batch)  # objects first (docstring)
        ids = [pk for pk, _key in batch]
        with transaction.atomic():
            records, _ = InferenceRecord.objects.filter(archive_object_id__in=ids).delete()
            objects, _ = ArchiveObject.objects.filter(pk__in=ids).delete()  # records gone first
            counts = PurgeCounts(objects=objects, records=records, versions=versions)
            if counts.objects or counts.records:
                _audit_purge(project, retention, cutoff, counts)
        total.objects += counts.objects
        total.records += counts.records
        total.versions += versions
        if len(batch) < PURGE_BATCH:
            break
    orphans = _sweep_orphans(project, cutoff, store)
    if orphans:
        total.orphans += orphans
        with transaction.atomic():
            _audit_purge(project, retention, cutoff, PurgeCounts(orphans=orphans))
    return total


def _audit_purge(project: Project, retention: int, cutoff: dt.datetime, counts: PurgeCounts):
    audit_append(
        project=project,
        actor=None,
        action="serving_archive.purged",
        artifact=("serving_archive", project.pk),
        payload={
            "retention_days": retention,
            "cutoff": cutoff.isoformat(),
            "objects": counts.objects,
            "records": counts.records,
            "object_versions": counts.versions,
            "unindexed_objects": counts.orphans,
        },
    )


def _sweep_orphans(project: Project, cutoff: dt.datetime, store: ObjectStore) -> int:
    """Delete objects of old day folders that no index row points at."""
    last_day = (cutoff - dt.timedelta(days=SWEEP_MARGIN_DAYS)).date()
    days = [last_day - dt.timedelta(days=n) for n in range(SWEEP_DAYS)]
    removed = 0
    for deployment_id in Deployment.objects.filter(project=project).values_list("pk", flat=True):
        for day in days:
            folder = f"{archive_prefix(project.pk, deployment_id)}{day.isoformat()}/"
            try:
                keys = [info.key for info in store.list(folder)]
            except StorageError as error:
                log.warning("archive sweep of %s skipped: %s", folder, error)
                continue
            if not keys:
                continue
            indexed = set(
                ArchiveObject.objects.filter(object_key__in=keys).values_list(
                    "object_key", flat=True
                )
            )
            for key in keys:
                if key not in indexed:
                    store.delete(key)
                    removed += 1
    return removed
