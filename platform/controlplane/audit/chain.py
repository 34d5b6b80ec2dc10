"""Canonical encoding and hashing of audit events and anchors; independent of the ORM.

Standard library only, no Django: the offline verifier (`controlplane.audit.verify`) imports
this module on an auditor's machine, so the platform and the auditor hash the same way.
"""

from __future__ import annotations

import hashlib
import hmac
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
    return canonical_document(
        {
            "project_id": project_id,
            "seq": seq,
            "actor_id": actor_id,
            "action": action,
            "artifact_type": artifact_type,
            "artifact_id": artifact_id,
            "payload": payload,
            "created_at": canonical_time(created_at),
        }
    )


# The fields an event's hash covers (created_at as canonical_time's text).
HASHED_FIELDS = (
    "project_id",
    "seq",
    "actor_id",
    "action",
    "artifact_type",
    "artifact_id",
    "payload",
    "created_at",
)


def canonical_document(document: dict[str, Any]) -> bytes:
    # sort_keys + fixed separators + ASCII: the same event always encodes to the same bytes,
    # on any Python version and whatever order the payload was built in.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_hash(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical).hexdigest()


def hash_subject(subject_id: str) -> str:
    """Personal identifiers enter the audit log only through this one-way hash."""
    return hashlib.sha256(("subject:" + subject_id).encode()).hexdigest()


def anchor_key_id(key: bytes) -> str:
    """A short public fingerprint, so a mismatch can say which key signed an anchor."""
    return hashlib.sha256(b"audit-anchor-key-id:" + key).hexdigest()[:12]


def anchor_signature(fields: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of an anchor's fields (every field of the document but its signature)."""
    signed = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, signed, hashlib.sha256).hexdigest()
