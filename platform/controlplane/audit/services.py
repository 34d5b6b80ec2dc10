from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from controlplane.audit.chain import canonical_event, event_hash
from controlplane.audit.models import AuditChain, AuditEvent


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
    AuditChain.objects.filter(pk=chain.pk).update(length=seq, head_hash=digest)
    return event


@dataclass(frozen=True)
class ChainVerification:
    project_id: int | None
    events_checked: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str = ""

    def describe(self) -> str:
        where = f"project {self.project_id}" if self.project_id is not None else "platform"
        if self.ok:
            return f"{where}: {self.events_checked} events, chain verified"
        return f"{where}: chain BROKEN at event #{self.first_bad_seq}: {self.reason}"


def audit_verify_chain(chain: AuditChain) -> ChainVerification:
    """Recompute every hash in order; stop at the first event that does not fit."""
    prev_hash = AuditChain._meta.get_field("head_hash").default
    expected_seq = 1
    checked = 0
    events = AuditEvent.objects.filter(chain=chain).order_by("seq").iterator(chunk_size=2000)
    for event in events:

        def broken(reason: str, seq: int = event.seq, checked: int = checked) -> ChainVerification:
            return ChainVerification(chain.project_id, checked, False, seq, reason)

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
        prev_hash = event.hash
        expected_seq += 1
        checked += 1
    if checked != chain.length or prev_hash != chain.head_hash:
        return ChainVerification(
            chain.project_id,
            checked,
            False,
            checked + 1,
            f"the chain head records {chain.length} events but {checked} remain",
        )
    return ChainVerification(chain.project_id, checked, True)


def audit_verify(project=None, *, all_chains: bool = False) -> list[ChainVerification]:
    chains = AuditChain.objects.all().order_by("id")
    if not all_chains:
        chains = chains.filter(project_id=project.pk if project is not None else None)
    return [audit_verify_chain(chain) for chain in chains]
