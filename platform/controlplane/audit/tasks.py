"""Control-queue tasks of the audit trail: anchoring chain heads in the object store."""

from __future__ import annotations

from celery import shared_task

from controlplane.audit.anchors import audit_anchor_chain, audit_anchor_chains
from controlplane.audit.models import AuditChain
from workers.protocol import CONTROL_QUEUE

ANCHOR_CHAINS_TASK = "control.audit_anchor_chains"
ANCHOR_CHAIN_TASK = "control.audit_anchor_chain"


# Anchoring is idempotent (a head already anchored is skipped), so a retry or a message
# delivered twice costs one listing at most; a store outage is retried on the next beat.
@shared_task(name=ANCHOR_CHAINS_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=300)
def anchor_audit_chains() -> int:
    return len(audit_anchor_chains())


@shared_task(name=ANCHOR_CHAIN_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=60)
def anchor_audit_chain(chain_id: int) -> bool:
    chain = AuditChain.objects.filter(pk=chain_id).first()
    return chain is not None and audit_anchor_chain(chain=chain) is not None
