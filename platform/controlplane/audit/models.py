"""The audit trail: one append-only, hash-chained log per project (plus one platform log).

Each event's hash is SHA-256 over the previous event's hash and a canonical JSON encoding
of the event (see `controlplane.audit.chain`). The database refuses UPDATE and DELETE on
`audit_auditevent` (triggers installed by migration 0002), so the log can only grow; the
`audit_verify` command recomputes every chain and names the first event that does not fit.

Events hold no personal data: actors are user ids, data subjects are hashed.
"""

from __future__ import annotations

from django.db import models

GENESIS_HASH = "0" * 64


class AuditChain(models.Model):
    """The head of one chain; its row is locked while an event is appended (ordering)."""

    # NULL project = the platform chain (tokens, users): events that belong to no project.
    project = models.OneToOneField(
        "projects.Project", on_delete=models.PROTECT, null=True, related_name="audit_chain"
    )
    # "platform" or "project:<id>": unique, so there is exactly one chain per scope
    # (a unique NULL project would not be unique on every database).
    scope = models.CharField(max_length=40, unique=True)
    length = models.PositiveBigIntegerField(default=0)
    head_hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"audit chain {self.scope} ({self.length} events)"


class AuditEvent(models.Model):
    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="events")
    # Denormalised from the chain so per-project queries need no join.
    project_id = models.BigIntegerField(null=True, db_index=True)
    seq = models.PositiveBigIntegerField()
    # A user id, not a foreign key: deleting a user must never rewrite the log.
    actor_id = models.BigIntegerField(null=True)
    action = models.CharField(max_length=64)
    artifact_type = models.CharField(max_length=64)
    artifact_id = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="one_event_per_seq")]
        indexes = [models.Index(fields=["project_id", "artifact_type", "artifact_id"])]
        ordering = ["chain_id", "seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.artifact_type}:{self.artifact_id}"


class AuditAnchor(models.Model):
    """An index of the signed chain heads written to the object store (`audit/anchors.py`).

    The object store is the record: `audit_verify` reads the anchors from there, never from
    this table, which someone with the database could edit. The table only tells the anchor
    task which heads are already anchored, so an idle chain is not anchored again.
    """

    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="anchors")
    length = models.PositiveBigIntegerField()
    head_hash = models.CharField(max_length=64)
    object_key = models.CharField(max_length=300, unique=True)
    anchored_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "length"], name="one_anchor_per_length")
        ]
        ordering = ["chain_id", "length"]

    def __str__(self) -> str:
        return f"anchor of {self.chain.scope} at #{self.length}"
