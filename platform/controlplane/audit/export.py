"""A project's audit chain as JSONL, for an auditor to check offline (`audit/verify.py`).

Line 1 is a header; then one line per event in seq order, holding exactly the fields its
hash covers (chain.HASHED_FIELDS, created_at as canonical text) plus prev_hash and hash;
then the chain's signed anchors as the object store holds them:

    {"type": "header", "format": "controlplane-audit-export", "version": 1, ...}
    {"type": "event", "seq": 1, ..., "prev_hash": "000...", "hash": "..."}
    {"type": "anchor", "object_key": "system/audit-anchors/...", "document": {...}}

The head is read once, before the events: the chain only grows, so events 1..length are
fixed and the export needs no long transaction while it streams.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.http import StreamingHttpResponse
from django.utils import timezone

from controlplane.audit.anchors import ANCHOR_PREFIX, MAX_ANCHOR_BYTES, scope_folder
from controlplane.audit.chain import canonical_time
from controlplane.audit.models import GENESIS_HASH, AuditChain, AuditEvent
from controlplane.audit.services import audit_append
from controlplane.storage import object_store
from workers.storage import ObjectStore
from workers.storage.errors import StorageError

EXPORT_FORMAT = "controlplane-audit-export"
EXPORT_VERSION = 1
_BATCH = 1000


@dataclass(frozen=True)
class ChainHead:
    chain_id: int | None
    scope: str
    length: int
    head_hash: str


def _line(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"


def _anchor_lines(scope: str, store: ObjectStore) -> tuple[list[dict[str, Any]], str]:
    """The stored anchors of a chain as they are (the verifier judges them), or an error."""
    lines = []
    try:
        for info in store.list(f"{ANCHOR_PREFIX}/{scope_folder(scope)}/"):
            line: dict[str, Any] = {"type": "anchor", "object_key": info.key}
            if info.size > MAX_ANCHOR_BYTES:
                line["problem"] = "too big to be an anchor"
            else:
                try:
                    line["document"] = json.loads(
                        store.get_bytes(info.key, max_size=MAX_ANCHOR_BYTES)
                    )
                except ValueError:
                    line["problem"] = "not a JSON document"
            lines.append(line)
    except StorageError as error:
        return [], f"the anchors could not be read from the object store ({error})"
    return lines, ""


def _head(project) -> ChainHead:
    scope = f"project:{project.pk}"
    chain = AuditChain.objects.filter(scope=scope).first()
    if chain is None:
        return ChainHead(None, scope, 0, GENESIS_HASH)
    return ChainHead(chain.pk, scope, chain.length, chain.head_hash)


def _event_line(event: AuditEvent) -> dict[str, Any]:
    return {
        "type": "event",
        "project_id": event.project_id,
        "seq": event.seq,
        "actor_id": event.actor_id,
        "action": event.action,
        "artifact_type": event.artifact_type,
        "artifact_id": event.artifact_id,
        "payload": event.payload,
        "created_at": canonical_time(event.created_at),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def audit_export_lines(project, *, store: ObjectStore | None = None) -> Iterator[str]:
    """The project's chain as JSONL lines (header, events, anchors); lazy over the events.

    The anchors are read before the head, so each one names a prefix of the exported chain.
    """
    anchors, anchors_error = _anchor_lines(f"project:{project.pk}", store or object_store())
    head = _head(project)
    header = {
        "type": "header",
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "project_id": project.pk,
        "project_slug": project.slug,
        "chain_id": head.chain_id,
        "scope": head.scope,
        "exported_at": timezone.now().isoformat(),
        "event_count": head.length,
        "head_hash": head.head_hash,
        "anchor_count": len(anchors),
    }
    if anchors_error:
        header["anchors_error"] = anchors_error
    yield _line(header)
    last = 0
    while head.chain_id is not None and last < head.length:
        batch = list(
            AuditEvent.objects.filter(
                chain_id=head.chain_id, seq__gt=last, seq__lte=head.length
            ).order_by("seq")[:_BATCH]
        )
        if not batch:
            break  # the rows are gone (a truncated table): the verifier reports the count
        for event in batch:
            yield _line(_event_line(event))
        last = batch[-1].seq
    for anchor in anchors:
        yield _line(anchor)


def audit_export(project, *, actor, store: ObjectStore | None = None) -> Iterator[str]:
    """Record the export (`audit.exported`, so it is in the export), then its lines."""
    audit_append(
        project=project,
        actor=actor,
        action="audit.exported",
        artifact=("project", project.pk),
        payload={"format": EXPORT_FORMAT, "version": EXPORT_VERSION},
    )
    return audit_export_lines(project, store=store)


def export_response(project, actor) -> StreamingHttpResponse:
    """The JSONL download of the project's chain (API and page alike), audited first."""
    response = StreamingHttpResponse(
        audit_export(project, actor=actor), content_type="application/x-ndjson; charset=utf-8"
    )
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{project.slug}-{stamp}.jsonl"'
    response["Cache-Control"] = "no-store"
    return response
