"""The chain badge's answer, cheap enough for every project page.

A full verification reads every event of the chain and the anchors in the object store:
fine on the audit page, too much for each page view of a busy project. So the last
result is cached with the head it covered, and a page view costs one read of the chain's
head row and one cache read:

- head unchanged since the last check: the cached result, as it is;
- head grown and the last check good: only the new events are verified (each links to
  the one before, the first to the cached head), `audit_verify_extension`;
- otherwise (no cached result, a head of the same length with another hash, a broken
  chain, or a full verification older than FULL_EVERY_SECONDS): a full verification,
  anchors included.

The audit page's "Verify the whole chain now" button verifies in full and refreshes the
cache (as does any call of `chain_status_full`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass

from django.core.cache import cache

from controlplane.audit.models import AuditChain
from controlplane.audit.services import ChainVerification, audit_verify, audit_verify_extension

# A full check (every event + anchors) at least this often per project, whatever the traffic.
FULL_EVERY_SECONDS = 15 * 60
# Kept a little longer than the full-check interval: an idle project's badge stays cached.
CACHE_SECONDS = FULL_EVERY_SECONDS + 60


@dataclass(frozen=True)
class ChainStatus:
    verification: ChainVerification
    length: int  # the head the result covers
    head_hash: str
    full_checked_at: float  # time.time() of the last full verification

    @property
    def full_check_age_seconds(self) -> float:
        return time.time() - self.full_checked_at

    @property
    def full_checked_on(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.full_checked_at, tz=dt.UTC)


def _key(project_id: int) -> str:
    return f"audit-chain-status:{project_id}"


def _store(project_id: int, status: ChainStatus) -> ChainStatus:
    cached = {**asdict(status), "verification": asdict(status.verification)}
    cache.set(_key(project_id), cached, CACHE_SECONDS)
    return status


def _load(project_id: int) -> ChainStatus | None:
    cached = cache.get(_key(project_id))
    if not isinstance(cached, dict):
        return None
    try:
        return ChainStatus(
            **{**cached, "verification": ChainVerification(**cached["verification"])}
        )
    except (TypeError, KeyError):
        return None  # written by another version of this class: verify again


def _head(project) -> dict | None:
    """The chain's head row ({pk, length, head_hash}), None before the first event."""
    head = (
        AuditChain.objects.filter(scope=f"project:{project.pk}")
        .values("pk", "length", "head_hash")
        .first()
    )
    return head if head is not None and head["length"] > 0 else None


def _full_verification(project) -> ChainVerification | None:
    results = audit_verify(project)
    return results[0] if results else None


def chain_status_full(project) -> ChainStatus | None:
    """Verify the whole chain and its anchors now (the audit page), and cache the result."""
    head = _head(project)
    verification = _full_verification(project) if head is not None else None
    if head is None or verification is None:
        return None
    status = ChainStatus(verification, head["length"], head["head_hash"], time.time())
    return _store(project.pk, status)


def chain_status(project) -> ChainStatus | None:
    """The project's chain status for the badge (None: no events yet), cheap per call.

    The result is stored with the head read *before* verifying: the chain only grows, so
    that head is a verified prefix the next call can extend from.
    """
    head = _head(project)
    if head is None:
        return None
    cached = _load(project.pk)
    if cached is None or cached.full_check_age_seconds >= FULL_EVERY_SECONDS:
        return chain_status_full(project)
    if (cached.length, cached.head_hash) == (head["length"], head["head_hash"]):
        return cached
    if not (cached.verification.ok and head["length"] > cached.length):
        return chain_status_full(project)  # rewritten, truncated or broken before: say how
    chain = AuditChain(pk=head["pk"], project_id=project.pk)
    extension = audit_verify_extension(chain, length=cached.length, head_hash=cached.head_hash)
    status = ChainStatus(
        _with_anchor_facts(extension, cached.verification),
        head["length"],
        head["head_hash"],
        cached.full_checked_at,
    )
    return _store(project.pk, status)


def _with_anchor_facts(
    extension: ChainVerification, previous: ChainVerification
) -> ChainVerification:
    """The extension's verdict with the anchors the last full check found holding."""
    return ChainVerification(
        extension.project_id,
        extension.events_checked,
        extension.ok,
        extension.first_bad_seq,
        extension.reason,
        previous.anchors_checked,
        previous.latest_anchor,
    )
