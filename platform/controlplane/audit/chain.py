"""Canonical encoding and hashing of audit events; independent of the ORM."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any


def canonical_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_event(
    *,
    project_id: int | None,
    seq: int,
    actor_id: int | None,
    action: str,
    artifact_type: str,
    artifact_id: str,
    payload: dict[str, Any],
    created_at: datetime,
) -> bytes:
    # sort_keys + fixed separators + ASCII: the same event always encodes to the same bytes,
    # on any Python version and whatever order the payload was built in.
    document = {
        "project_id": project_id,
        "seq": seq,
        "actor_id": actor_id,
        "action": action,
        "artifact_type": artifact_type,
        "artifact_id": artifact_id,
        "payload": payload,
        "created_at": canonical_time(created_at),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_hash(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical).hexdigest()


def hash_subject(subject_id: str) -> str:
    """Personal identifiers enter the audit log only through this one-way hash."""
    return hashlib.sha256(("subject:" + subject_id).encode()).hexdigest()
