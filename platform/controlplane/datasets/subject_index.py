"""The subject index of a raw upload, built by the control worker once the version is ready.

A pipeline output carries a subject index (engine.data.subject_index); an uploaded version
of a dataset with a subject field gets the same kind when it is ingested, so that an
erasure or an access request finds a person in it through the index (method `index`)
instead of reading every record (method `field`).

    version_mark_ready (upload completed, or an erasure's rewrite without an index)
      -> index_soon: `control.dataset_subject_index` sent when the transaction commits
      -> version_subject_index (control worker): one streaming pass over the version's
         JSONL objects, straight from the store (engine.data.raw_subject_index), hashed
         with the project's current subject key (controlplane/subject_keys.py); the two
         files are stored next to the version's objects and added to it as role `index`:
           <prefix>subject-index/subject_index.npy   (subject hash, file, line)
           <prefix>subject-index/subject_index.json  files, lines, sha256, key id

The web process never imports the engine (controlplane/engine_tools.py): it only sends
the task. Versions uploaded before this existed, or whose message was lost, have no index
and are searched by the streaming `field` pass, as before. An erasure's rewrite of an
indexed version writes the new version's index itself (engine.data.erasure), under the
key generation of the old one: the job has every generation's key and the index's
manifest names its own by fingerprint, so an index built before a key rotation is still
read. An index is never rebuilt in place after a rotation.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from django.db import transaction

from controlplane.audit.services import audit_append
from controlplane.datasets.models import (
    DatasetFile,
    DatasetKind,
    DatasetVersion,
    FileRole,
    VersionState,
)
from workers.storage.subject_index import build_raw_subject_index

logger = logging.getLogger(__name__)

INDEX_TASK = "control.dataset_subject_index"
# engine.data.raw_subject_index's file names (the engine is not imported here).
RAW_INDEX_MANIFEST = "subject_index.json"
RAW_INDEX_ARRAY = "subject_index.npy"
RAW_INDEX_NAMES = (RAW_INDEX_ARRAY, RAW_INDEX_MANIFEST)
INDEX_FOLDER = "subject-index/"
_JSONL = tuple(s + c for s in (".jsonl", ".ndjson") for c in ("", ".gz", ".zst"))


def _indexed_files(files: list[DatasetFile]) -> list[DatasetFile]:
    """The files the index covers: the JSONL records (what the `field` pass reads)."""
    return [f for f in files if f.role == FileRole.DATA and f.name.lower().endswith(_JSONL)]


def needs_subject_index(version: DatasetVersion, files: list[DatasetFile]) -> bool:
    """A ready raw text version of a dataset with a subject field, holding JSONL, without
    an index yet. (A pipeline output has its own; it is recognised by its manifest.)"""
    dataset = version.dataset
    return (
        version.state == VersionState.READY
        and dataset.kind == DatasetKind.TEXT
        and bool(dataset.subject_field)
        and not any(f.role in (FileRole.MANIFEST, FileRole.INDEX) for f in files)
        and not any(f.name in RAW_INDEX_NAMES for f in files)
        and bool(_indexed_files(files))
    )


def index_soon(version: DatasetVersion, files: list[DatasetFile]) -> None:
    """Have the control worker index the version once the caller's transaction commits."""
    if needs_subject_index(version, files):
        transaction.on_commit(lambda: _send(version.pk), robust=True)


def _send(version_id: int) -> None:
    from controlplane.celery_app import app
    from workers.protocol import CONTROL_QUEUE

    try:
        app.send_task(INDEX_TASK, args=[version_id], queue=CONTROL_QUEUE)
    except Exception:  # noqa: BLE001 - without an index the erasure reads the field
        logger.warning("could not send %s for dataset version %s", INDEX_TASK, version_id)


def version_subject_index(version_id: int) -> str:
    """Build and attach the version's subject index (control worker). Returns what it did:
    "indexed", "not needed" (gone, not raw, indexed already) or "gone meanwhile"."""
    from controlplane.storage import object_store
    from controlplane.subject_keys import project_subject_key

    version = (
        DatasetVersion.objects.select_related("dataset__project").filter(pk=version_id).first()
    )
    if version is None:
        return "not needed"
    files = list(version.files.order_by("name", "id"))
    if not needs_subject_index(version, files):
        return "not needed"
    key = project_subject_key(version.dataset.project)
    store = object_store()
    with tempfile.TemporaryDirectory(prefix=f"subject-index-{version.pk}-") as work:
        manifest = _build(store, version, _indexed_files(files), key, Path(work))
        stored = {name: _store(store, version, Path(work) / name) for name in RAW_INDEX_NAMES}
    with transaction.atomic():
        locked = (
            DatasetVersion.objects.select_for_update()
            .select_related("dataset__project")
            .filter(pk=version.pk)
            .first()
        )
        current = list(locked.files.all()) if locked else []
        if locked is None or not needs_subject_index(locked, current):
            indexed = locked is not None and any(f.name in RAW_INDEX_NAMES for f in current)
            if not indexed:  # removed or erased meanwhile: nothing may point at them
                transaction.on_commit(lambda: _delete(store, stored), robust=True)
            return "gone meanwhile"
        _attach(locked, stored, manifest)
    return "indexed"


def _build(store, version, files: list[DatasetFile], key_hex: str, work: Path) -> dict:
    """One streaming pass per object, straight from the store; writes both files."""
    return build_raw_subject_index(
        store,
        version.dataset.subject_field,
        [(file.name, file.object_key, file.sha256) for file in files],
        bytes.fromhex(key_hex),
        work,
    )


def _store(store, version: DatasetVersion, path: Path):
    """Stored at a key of its own under the version's prefix. A run that died after
    storing left it there with no row pointing at it: replaced."""
    key = f"{version.prefix}{INDEX_FOLDER}{path.name}"
    if store.exists(key):
        store.delete(key)
    with path.open("rb") as stream:
        return store.put_stream(key, stream, length=path.stat().st_size)


def _delete(store, stored: dict) -> None:
    for info in stored.values():
        try:
            store.delete(info.key)
        except Exception:  # noqa: BLE001 - an orphan index holds hashes only
            logger.warning("could not delete %s", info.key)


def _attach(version: DatasetVersion, stored: dict, manifest: dict) -> None:
    rows = DatasetFile.objects.bulk_create(
        DatasetFile(
            version=version,
            name=name,
            role=FileRole.INDEX,
            object_key=info.key,
            size=info.size,
            sha256=info.sha256,
        )
        for name, info in stored.items()
    )
    version.byte_count += sum(row.size for row in rows)
    version.save(update_fields=["byte_count"])
    audit_append(
        project=version.dataset.project,
        actor=None,
        action="dataset_version.subject_indexed",
        artifact=version,
        payload={
            "dataset_id": version.dataset_id,
            "number": version.number,
            "subject_field": version.dataset.subject_field,
            "key_id": manifest["subject_key_id"],
            "entries": manifest["entries"],
            "indexed": [{"name": f["name"], "lines": f["lines"]} for f in manifest["files"]],
            "files": [{"name": row.name, "sha256": row.sha256, "size": row.size} for row in rows],
        },
    )
