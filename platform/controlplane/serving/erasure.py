"""Erasing one data subject from the inference archive: objects, old versions and index.

    report = archive_erase_subject(project=project, subject_hash=hash_subject(project, email))

An archive object is a concatenation of gzip members, one per record, and each
InferenceRecord row holds its member's (offset, length). For every object that holds one
of the subject's records (found through the index's `subject_hash`, never by reading):

1. **Write** a new object with the other indexed members, copied byte for byte in offset
   order (streamed: constant memory), under a NEW key in the same folder:
   `<name>.e<16 hex>.jsonl.gz`, the hex a digest of the old key and the removed request
   ids (keys are never overwritten: see workers/storage/base.py; the same folder keeps the
   retention purge and its orphan sweep working). Bytes no row points at are not copied.
2. **Repoint**, in one transaction: a new ArchiveObject row for the new key, the kept rows
   moved to it with their new offsets. The old row keeps only the subject's rows, which
   still point at the old object's (still present) bytes.
3. **Delete** every stored version of the old key by version id (`delete_all_versions`).
4. **Drop** the old ArchiveObject row with the subject's rows.

Re-runnable to completion after a crash anywhere, and never an index row pointing at
bytes that do not match:
- killed after 1: the new key exists with no row; a re-run computes the same key (same
  old key, same removed ids), deletes that leftover and writes it again;
- killed after 2 or 3: the old row holds only the subject's rows, so the re-run has
  nothing to keep: it deletes the old key's versions (again: idempotent) and the row;
- an object holding only the subject's records goes straight to 3 and 4.
The rows of the subject are removed last, so a re-run always finds what is left to do.

Nothing is audited here: the erasure job that calls this records the report. A caller that
keeps an account passes `account`: it gets each object's erasure (with the version ids
listed for deletion) before the old bytes go, so a run killed anywhere after that leaves
the object on the caller's record; the re-run finds the object again (its rows go last),
reports it again, and the caller merges the two by key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from django.db import transaction

from controlplane.projects.models import Project
from controlplane.serving.models import ArchiveObject, InferenceRecord
from controlplane.storage import object_store
from workers.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

ARCHIVE_CONTENT_TYPE = "application/gzip"
_NAME = re.compile(r"^(?P<stem>.*?)(?:\.e[0-9a-f]{16})?(?P<ext>\.jsonl\.gz)?$")
_HASH = re.compile(r"[0-9a-f]{64}")


class ArchiveChangedError(StorageError):
    """The object's index rows changed while it was being rewritten (another erasure)."""


@dataclass
class ObjectErasure:
    key: str  # the old object, now deleted with every stored version
    records_removed: int
    records_kept: int
    deleted_versions: list[str]
    new_key: str | None = None  # None: every record was the subject's, nothing rewritten
    new_size: int | None = None
    new_sha256: str | None = None
    new_version_id: str | None = None


@dataclass
class ArchiveErasureReport:
    project_id: int
    records_removed: int = 0
    objects: list[ObjectErasure] = field(default_factory=list)

    @property
    def objects_rewritten(self) -> int:
        return sum(1 for o in self.objects if o.new_key)

    @property
    def versions_deleted(self) -> int:
        return sum(len(o.deleted_versions) for o in self.objects)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["objects_rewritten"] = self.objects_rewritten
        data["versions_deleted"] = self.versions_deleted
        return data


def archive_erase_subject(
    *,
    project: Project,
    subject_hash: str,
    store: ObjectStore | None = None,
    account: Callable[[ObjectErasure], None] | None = None,
) -> ArchiveErasureReport:
    """Remove every archived record of the subject (see the module docstring); `account`
    is called with each object's erasure before its old versions are deleted."""
    if not isinstance(subject_hash, str) or not _HASH.fullmatch(subject_hash):
        raise ValueError("subject_hash must be 64 lower-case hex digits (a keyed hash)")
    store = store or object_store()
    report = ArchiveErasureReport(project_id=project.pk)
    object_ids = (
        InferenceRecord.objects.filter(project=project, subject_hash=subject_hash)
        .values_list("archive_object_id", flat=True)
        .distinct()
    )
    for archived in ArchiveObject.objects.filter(pk__in=list(object_ids)).order_by("pk"):
        report.objects.append(_erase_from_object(archived, subject_hash, store, account))
    report.records_removed = sum(o.records_removed for o in report.objects)
    return report


def _rows(archived: ArchiveObject) -> list[tuple[int, str, int, int, str]]:
    return list(
        InferenceRecord.objects.filter(archive_object=archived)
        .order_by("offset", "pk")
        .values_list("pk", "request_id", "offset", "length", "subject_hash")
    )


def _erase_from_object(
    archived: ArchiveObject,
    subject_hash: str,
    store: ObjectStore,
    account: Callable[[ObjectErasure], None] | None,
) -> ObjectErasure:
    rows = _rows(archived)
    removed = [row for row in rows if row[4] == subject_hash]
    kept = [row for row in rows if row[4] != subject_hash]
    done = ObjectErasure(
        key=archived.object_key,
        records_removed=len(removed),
        records_kept=len(kept),
        deleted_versions=[],
    )
    if kept:
        new_key = rewritten_key(archived.object_key, [row[1] for row in removed])
        stored = _write_kept(store, archived, kept, new_key)
        _repoint(archived, subject_hash, kept, stored)
        done.new_key, done.new_size = new_key, stored.size
        done.new_sha256, done.new_version_id = stored.sha256, stored.version_id
    # From here the old row holds only the subject's rows: deleting the old bytes first
    # leaves at worst rows that read as "purged", never rows pointing at other bytes.
    # Listed first: what a killed delete took is then on the account all the same.
    listed = [v.version_id for v in store.list_versions(archived.object_key)]
    done.deleted_versions = listed
    if account is not None:
        account(done)
    deleted = store.delete_all_versions(archived.object_key)
    done.deleted_versions = listed + [v for v in deleted if v not in listed]
    with transaction.atomic():
        ArchiveObject.objects.select_for_update().filter(pk=archived.pk).first()
        InferenceRecord.objects.filter(archive_object=archived, subject_hash=subject_hash).delete()
        if InferenceRecord.objects.filter(archive_object=archived).exists():
            # Rows of others arrived meanwhile; their bytes are gone: say so, never drop them.
            raise ArchiveChangedError(
                f"{archived.object_key} gained other records during its erasure"
            )
        ArchiveObject.objects.filter(pk=archived.pk).delete()
    return done


def rewritten_key(key: str, removed_request_ids: list[str]) -> str:
    """The key of `key` rewritten without those records: same folder, same extension, a
    digest of what was removed (a re-run of the same erasure makes the same key)."""
    digest = hashlib.sha256(
        "\n".join([key, *sorted(removed_request_ids)]).encode("utf-8")
    ).hexdigest()[:16]
    match = _NAME.match(key)
    assert match is not None  # the pattern matches any string
    return f"{match['stem']}.e{digest}{match['ext'] or ''}"


def _write_kept(store: ObjectStore, archived: ArchiveObject, kept: list, new_key: str):
    if ArchiveObject.objects.filter(object_key=new_key).exists():
        # Only a committed repoint creates this row, and it moves the kept rows away.
        raise ArchiveChangedError(f"{new_key} is already indexed while {archived} is not done")
    # A run killed between its put and its repoint left this unindexed copy: write it anew.
    store.delete_all_versions(new_key)
    spans = [(row[2], row[3]) for row in kept]
    length = sum(span[1] for span in spans)
    stored = store.put_stream(
        new_key,
        _members(store, archived.object_key, spans),
        length=length,
        content_type=ARCHIVE_CONTENT_TYPE,
    )
    return stored


def _members(store: ObjectStore, key: str, spans: list[tuple[int, int]]) -> Iterator[bytes]:
    """The bytes of `spans` (sorted, non-overlapping) out of one streamed read of `key`."""
    for (offset, length), (next_offset, _) in zip(spans, spans[1:], strict=False):
        if offset + length > next_offset:
            raise StorageError(f"{key}: index rows overlap at byte {next_offset}")
    index, position = 0, 0
    for chunk in store.iter_chunks(key):
        start, end = position, position + len(chunk)
        while index < len(spans):
            offset, length = spans[index]
            lo, hi = max(offset, start), min(offset + length, end)
            if lo < hi:
                yield chunk[lo - start : hi - start]
            if offset + length > end:
                break
            index += 1
        position = end
    if index < len(spans):
        raise StorageError(f"{key} is shorter ({position} bytes) than its index says")


def _repoint(archived: ArchiveObject, subject_hash: str, kept: list, stored) -> None:
    """The kept rows onto the new object, in one transaction, if nothing moved meanwhile."""
    with transaction.atomic():
        ArchiveObject.objects.select_for_update().filter(pk=archived.pk).first()
        others = [row for row in _rows(archived) if row[4] != subject_hash]
        if others != kept:
            raise ArchiveChangedError(
                f"the index of {archived.object_key} changed during its rewrite; run again"
            )
        replacement = ArchiveObject.objects.create(
            object_key=stored.key,
            project_id=archived.project_id,
            deployment_id=archived.deployment_id,
            replica_id=archived.replica_id,
            window_start=archived.window_start,
            window_end=archived.window_end,
            size=stored.size,
            records=len(kept),
        )
        moved = []
        offset = 0
        for pk, _request_id, _old_offset, length, _hash in kept:
            moved.append(
                InferenceRecord(pk=pk, archive_object=replacement, offset=offset, length=length)
            )
            offset += length
        InferenceRecord.objects.bulk_update(moved, ["archive_object", "offset"], batch_size=1000)
        ArchiveObject.objects.filter(pk=archived.pk).update(
            records=len(_rows(archived)), size=archived.size
        )
