from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.utils import timezone

from controlplane.audit.anchors import Anchor, StoredAnchor, stored_anchors
from controlplane.audit.chain import canonical_event, event_hash
from controlplane.audit.models import GENESIS_HASH, AuditChain, AuditEvent
from workers.storage import ObjectStore
from workers.storage.errors import StorageError

logger = logging.getLogger(__name__)


def _artifact_ref(artifact: models.Model | tuple[str, Any]) -> tuple[str, str]:
    if isinstance(artifact, tuple):
        kind, ident = artifact
        return kind, str(ident)
    return artifact._meta.model_name, str(artifact.pk)


def _chain_for_update(project) -> AuditChain:
    project_id = project.pk if project is not None else None
    scope = "platform" if project_id is None else f"project:{project_id}"
    chain = AuditChain.objects.select_for_update().filter(scope=scope).first()
    if chain is None:
        AuditChain.objects.get_or_create(scope=scope, defaults={"project_id": project_id})
        chain = AuditChain.objects.select_for_update().get(scope=scope)
    return chain


@transaction.atomic
def audit_append(
    *,
    project,
    actor: AbstractBaseUser | None,
    action: str,
    artifact: models.Model | tuple[str, Any],
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the project's chain, in the caller's transaction.

    The chain row is locked (SELECT ... FOR UPDATE) until the transaction ends, so
    concurrent writers append one after the other and every event links to its
    predecessor. Called by every service that changes state.
    """
    artifact_type, artifact_id = _artifact_ref(artifact)
    # Round-trip through JSON so the stored payload is exactly what was hashed.
    clean_payload = json.loads(json.dumps(payload or {}, cls=DjangoJSONEncoder))
    chain = _chain_for_update(project)
    seq = chain.length + 1
    created_at = timezone.now()
    actor_id = actor.pk if actor is not None and actor.is_authenticated else None
    canonical = canonical_event(
        project_id=chain.project_id,
        seq=seq,
        actor_id=actor_id,
        action=action,
        artifact_type=artifact_type,
        artifact_id=artifact_id,
        payload=clean_payload,
        created_at=created_at,
    )
    digest = event_hash(chain.head_hash, canonical)
    event = AuditEvent.objects.create(
        chain=chain,
        project_id=chain.project_id,
        seq=seq,
        actor_id=actor_id,
        action=action,
        artifact_type=artifact_type,
        artifact_id=artifact_id,
        payload=clean_payload,
        created_at=created_at,
        prev_hash=chain.head_hash,
        hash=digest,
    )
    # The database's head trigger accepts exactly this update: one step onto the event above.
    AuditChain.objects.filter(pk=chain.pk).update(length=seq, head_hash=digest)
    every = settings.AUDIT_ANCHOR_EVERY_EVENTS
    if every and seq % every == 0:
        transaction.on_commit(partial(_request_anchor, chain.pk), robust=True)
    return event


def _request_anchor(chain_id: int) -> None:
    """Ask the control worker to anchor this chain now; the beat catches up if this fails."""
    from controlplane.audit.tasks import ANCHOR_CHAIN_TASK
    from controlplane.celery_app import app
    from workers.protocol import CONTROL_QUEUE

    try:
        # retry=False: a broker outage must not stall the request that appended the event.
        app.send_task(ANCHOR_CHAIN_TASK, args=[chain_id], queue=CONTROL_QUEUE, retry=False)
    except Exception as error:  # noqa: BLE001 - any broker failure; the beat anchors later
        logger.warning("audit anchor of chain %s not requested: %s", chain_id, error)


@dataclass(frozen=True)
class ChainVerification:
    project_id: int | None
    events_checked: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str = ""
    anchors_checked: int = 0
    latest_anchor: int | None = None

    def describe(self) -> str:
        where = f"project {self.project_id}" if self.project_id is not None else "platform"
        if self.ok:
            anchored = (
                f", {self.anchors_checked} anchors hold (latest at #{self.latest_anchor})"
                if self.anchors_checked
                else ", not anchored yet"
            )
            return f"{where}: {self.events_checked} events, chain verified{anchored}"
        at = f" at event #{self.first_bad_seq}" if self.first_bad_seq is not None else ""
        return f"{where}: chain BROKEN{at}: {self.reason}"


def _recompute(
    chain: AuditChain, *, after: tuple[int, str] = (0, GENESIS_HASH)
) -> tuple[ChainVerification | None, dict[int, str]]:
    """Recompute every hash in order; stop at the first event that does not fit.

    `after` = (length, head hash) of a prefix already verified: only the events past it
    are read, the first of them must link to that hash. Returns (the failure or None, the
    hash of every event read, by seq).
    """
    verified_length, prev_hash = after
    expected_seq = verified_length + 1
    hashes: dict[int, str] = {}
    events = (
        AuditEvent.objects.filter(chain=chain, seq__gt=verified_length)
        .order_by("seq")
        .iterator(chunk_size=2000)
    )
    for event in events:

        def broken(reason: str, seq: int = event.seq) -> tuple[ChainVerification, dict]:
            checked = verified_length + len(hashes)
            return ChainVerification(chain.project_id, checked, False, seq, reason), hashes

        if event.seq != expected_seq:
            return broken(
                f"expected event #{expected_seq}, found #{event.seq} (an event is missing)",
                expected_seq,
            )
        if event.prev_hash != prev_hash:
            return broken("its previous-hash does not match the event before it")
        canonical = canonical_event(
            project_id=event.project_id,
            seq=event.seq,
            actor_id=event.actor_id,
            action=event.action,
            artifact_type=event.artifact_type,
            artifact_id=event.artifact_id,
            payload=event.payload,
            created_at=event.created_at,
        )
        if event_hash(prev_hash, canonical) != event.hash:
            return broken("its content does not match its hash (the row was altered)")
        hashes[event.seq] = prev_hash = event.hash
        expected_seq += 1
    checked = verified_length + len(hashes)
    if checked != chain.length or prev_hash != chain.head_hash:
        failure = ChainVerification(
            chain.project_id,
            checked,
            False,
            checked + 1,
            f"the chain head records {chain.length} events but {checked} remain",
        )
        return failure, hashes
    return None, hashes


def _anchor_failure(hashes: dict[int, str], anchors: list[Anchor]) -> tuple[int, str] | None:
    """The first anchored head the chain no longer holds: (first bad seq, reason)."""
    length = len(hashes)
    last_good = 0
    for anchor in sorted(anchors, key=lambda a: a.length):
        when = f"anchored at #{anchor.length} on {anchor.anchored_at}"
        if anchor.length > length:
            return length + 1, (
                f"TRUNCATED: the chain ends at #{length} but was {when}; "
                f"events #{length + 1}..#{anchor.length} were removed"
            )
        if hashes[anchor.length] != anchor.head_hash:
            return last_good + 1, (
                f"REWRITTEN: event #{anchor.length} differs from the head {when}; "
                f"history after #{last_good} was replaced"
            )
        last_good = anchor.length
    return None


@contextmanager
def _one_snapshot() -> Iterator[None]:
    """Read the head row and its events from one snapshot.

    Under READ COMMITTED each statement sees the latest commits, so an append landing
    between reading the head and reading the events would look like a head that disagrees
    with its events. (Inside a caller's transaction the isolation level is the caller's.)
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def audit_verify_chain(
    chain: AuditChain, anchors: list[StoredAnchor] | None = None
) -> ChainVerification:
    """Recompute the chain, then check that it still holds every anchored head.

    Read the anchors before calling this: the chain only grows, so a head anchored before
    the chain is read must be a prefix of it.
    """
    with _one_snapshot():
        chain = AuditChain.objects.get(pk=chain.pk)
        failure, hashes = _recompute(chain)
    if failure is not None:
        return failure
    readings = anchors or []
    untrusted = [reading.problem for reading in readings if reading.anchor is None]
    if untrusted:
        return ChainVerification(chain.project_id, len(hashes), False, None, untrusted[0])
    valid = [reading.anchor for reading in readings if reading.anchor is not None]
    anchor_failure = _anchor_failure(hashes, valid)
    if anchor_failure is not None:
        first_bad, reason = anchor_failure
        return ChainVerification(chain.project_id, len(hashes), False, first_bad, reason)
    latest = max((anchor.length for anchor in valid), default=None)
    return ChainVerification(chain.project_id, len(hashes), True, None, "", len(valid), latest)


def audit_verify_extension(chain: AuditChain, *, length: int, head_hash: str) -> ChainVerification:
    """Verify only the events appended after a prefix already verified (`length` events
    ending in `head_hash`): each must link to the one before, the first to `head_hash`.

    What the cached chain badge uses between full verifications (controlplane.audit.status):
    a rewrite of the prefix shows as the first new event not linking to `head_hash`.
    """
    with _one_snapshot():
        chain = AuditChain.objects.get(pk=chain.pk)
        failure, _hashes = _recompute(chain, after=(length, head_hash))
    if failure is not None:
        return failure
    return ChainVerification(chain.project_id, chain.length, True)


def _missing_chain(scope: str, readings: list[StoredAnchor]) -> ChainVerification:
    """A chain the store has anchors of but the database has no row for: deleted whole."""
    number = scope.split(":", 1)[1] if scope.startswith("project:") else ""
    project_id = int(number) if number.isdigit() else None  # else a stray folder: named below
    lengths = [reading.anchor.length for reading in readings if reading.anchor is not None]
    detail = f"anchored at #{max(lengths)}" if lengths else "anchored"
    return ChainVerification(
        project_id,
        0,
        False,
        1,
        f"TRUNCATED: chain {scope} is missing from the database but {detail}",
    )


def audit_verify(
    project=None, *, all_chains: bool = False, store: ObjectStore | None = None
) -> list[ChainVerification]:
    """Verify the project's chain (or the platform chain, or every chain) and its anchors."""
    chains = AuditChain.objects.all().order_by("id")
    scope = None
    if not all_chains:
        scope = "platform" if project is None else f"project:{project.pk}"
        chains = chains.filter(scope=scope)
    try:
        anchors = stored_anchors(scope, store=store)
    except StorageError as error:
        unread = f"not verified: the anchors could not be read from the object store ({error})"
        return [ChainVerification(chain.project_id, 0, False, None, unread) for chain in chains]
    results = [audit_verify_chain(chain, anchors.pop(chain.scope, [])) for chain in chains]
    results += [_missing_chain(orphan, readings) for orphan, readings in sorted(anchors.items())]
    return results
