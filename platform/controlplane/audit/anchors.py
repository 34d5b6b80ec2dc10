"""Signed chain heads kept outside the database, so that truncation and rewrites show.

Whoever holds the database (a superuser, the tables' owner) can drop the triggers, delete
the tail of a chain and point its head at the new last event: the shorter chain then
recomputes cleanly. An *anchor* is a chain's (length, head hash) at one moment, signed
with HMAC-SHA256 and written once to the object store under

    system/audit-anchors/<scope>/<length, 12 digits>-<UTC time>.json

The store refuses to overwrite a key, and the bucket should refuse deletes under the
prefix (docs/compose.md: a MinIO policy, S3 Object Lock or a deny-delete bucket policy).
`audit_verify` then checks that each chain still holds every anchored head as a prefix.

The key is AUDIT_ANCHOR_KEY (several, comma-separated, during a rotation: the first signs,
each verifies). Unset, as in the embedded default, it is derived from SECRET_KEY; set it in
production so that rotating SECRET_KEY leaves the anchors verifiable (`check --deploy`
warns). Anchors are written by the control worker's beat (`control.audit_anchor_chains`),
after every AUDIT_ANCHOR_EVERY_EVENTS events of a chain, and by `manage.py audit_anchor`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone

from controlplane.audit.chain import anchor_key_id, anchor_signature
from controlplane.audit.models import AuditAnchor, AuditChain
from controlplane.storage import object_store
from workers.storage import ObjectStore

ANCHOR_PREFIX = "system/audit-anchors"
ANCHOR_FORMAT = 1
# Anchors are tiny; anything bigger under the prefix is not one of ours.
MAX_ANCHOR_BYTES = 4096
_DERIVATION_LABEL = b"controlplane audit anchor key v1"


def anchor_keys() -> list[bytes]:
    """The signing key first, then any older keys still accepted when verifying."""
    configured = [key for key in settings.AUDIT_ANCHOR_KEY.split(",") if key.strip()]
    if configured:
        return [key.strip().encode() for key in configured]
    derived = hmac.new(settings.SECRET_KEY.encode(), _DERIVATION_LABEL, hashlib.sha256)
    return [derived.hexdigest().encode()]


def key_id(key: bytes) -> str:
    """A short public fingerprint, so a mismatch can say which key signed an anchor."""
    return anchor_key_id(key)


@dataclass(frozen=True)
class Anchor:
    scope: str
    chain_id: int
    project_id: int | None
    length: int
    head_hash: str
    anchored_at: str
    key_id: str
    format: int = ANCHOR_FORMAT

    def signature(self, key: bytes) -> str:
        return anchor_signature(asdict(self), key)


@dataclass(frozen=True)
class StoredAnchor:
    """An anchor read back from the store: `problem` is set when it cannot be trusted."""

    object_key: str
    anchor: Anchor | None
    problem: str = ""


def scope_folder(scope: str) -> str:
    # "project:12" -> "project-12": ':' is not a key character (workers/storage/keys.py).
    return scope.replace(":", "-")


def _scope_of_folder(folder: str) -> str:
    return folder.replace("-", ":", 1) if folder.startswith("project-") else folder


def anchor_object_key(scope: str, length: int, moment: datetime) -> str:
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    # Zero-padded length: listing a chain's folder returns its anchors in chain order.
    return f"{ANCHOR_PREFIX}/{scope_folder(scope)}/{length:012d}-{stamp}.json"


def audit_anchor_chain(
    *, chain: AuditChain, store: ObjectStore | None = None
) -> AuditAnchor | None:
    """Sign and store the chain's committed head; None when it is empty or already anchored."""
    chain = AuditChain.objects.get(pk=chain.pk)  # the committed head, not a caller's copy
    if chain.length == 0 or AuditAnchor.objects.filter(chain=chain, length=chain.length).exists():
        return None
    signing_key = anchor_keys()[0]
    moment = timezone.now()
    anchor = Anchor(
        scope=chain.scope,
        chain_id=chain.pk,
        project_id=chain.project_id,
        length=chain.length,
        head_hash=chain.head_hash,
        anchored_at=moment.astimezone(UTC).isoformat(),
        key_id=key_id(signing_key),
    )
    document = {**asdict(anchor), "signature": anchor.signature(signing_key)}
    object_key = anchor_object_key(chain.scope, chain.length, moment)
    (store or object_store()).put_bytes(
        object_key,
        json.dumps(document, sort_keys=True, indent=1).encode(),
        content_type="application/json",
    )
    # Two anchorers racing on one head both write an object (distinct times); one row wins.
    row, _created = AuditAnchor.objects.get_or_create(
        chain=chain,
        length=chain.length,
        defaults={"head_hash": chain.head_hash, "object_key": object_key, "anchored_at": moment},
    )
    return row


def audit_anchor_chains(*, store: ObjectStore | None = None) -> list[AuditAnchor]:
    """Anchor every chain that grew since its last anchor (the beat task's work)."""
    written = []
    for chain in AuditChain.objects.filter(length__gt=0).order_by("id"):
        anchor = audit_anchor_chain(chain=chain, store=store)
        if anchor is not None:
            written.append(anchor)
    return written


def _parse(object_key: str, data: bytes, folder: str) -> StoredAnchor:
    def refused(problem: str) -> StoredAnchor:
        return StoredAnchor(object_key, None, problem)

    try:
        document = json.loads(data)
        signature = document.pop("signature")
        anchor = Anchor(**document)
    except (ValueError, TypeError, KeyError, AttributeError):
        return refused(f"anchor {object_key} is not a valid anchor document")
    keys = {key_id(key): key for key in anchor_keys()}
    key = keys.get(anchor.key_id)
    if key is None or not hmac.compare_digest(anchor.signature(key), str(signature)):
        ours = ", ".join(keys)
        return refused(
            f"anchor {object_key} has a bad signature (forged, or signed with key id "
            f"{anchor.key_id} while AUDIT_ANCHOR_KEY has {ours})"
        )
    if scope_folder(anchor.scope) != folder:
        return refused(f"anchor {object_key} names chain {anchor.scope}, not its folder's")
    return StoredAnchor(object_key, anchor)


def stored_anchors(
    scope: str | None = None, *, store: ObjectStore | None = None
) -> dict[str, list[StoredAnchor]]:
    """Every anchor in the store (of one chain when `scope` is given), by chain scope.

    Raises StorageError when the store cannot be read.
    """
    store = store or object_store()
    prefix = f"{ANCHOR_PREFIX}/{scope_folder(scope)}/" if scope else f"{ANCHOR_PREFIX}/"
    found: dict[str, list[StoredAnchor]] = defaultdict(list)
    for info in store.list(prefix):
        folder = info.key[len(ANCHOR_PREFIX) + 1 :].split("/", 1)[0]
        if info.size > MAX_ANCHOR_BYTES:
            reading = StoredAnchor(info.key, None, f"anchor {info.key} is too big to be one")
        else:
            reading = _parse(info.key, store.get_bytes(info.key, max_size=MAX_ANCHOR_BYTES), folder)
        found[_scope_of_folder(folder)].append(reading)
    return dict(found)
