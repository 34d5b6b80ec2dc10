"""What every way of making or removing a version shares: numbers, readiness, removal.

Invariants:
- A version number is taken from `Dataset.last_version_number` under the dataset's row
  lock and that counter only grows, so a removed version's number is never given out again
  (a client, a lineage record or an audit event that says "v3" always means one thing).
- A version becomes `ready` only through `version_mark_ready`, which is conditional on
  the state the caller claimed: a version removed meanwhile is never resurrected.
- A version is removed only after it was claimed into `removing` by one caller; objects go
  first, then the rows together with a `dataset_version.removed` audit event that gives the
  reason. A remover that dies half-way leaves `removing` with a deadline, and the reaper
  finishes the job (removal is idempotent: aborting or deleting what is gone is a no-op).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion, VersionState
from controlplane.datasets.subject_index import index_soon
from controlplane.policies.facts import dataset_facts
from controlplane.policies.gates import enforce
from controlplane.policies.rules import Gate
from controlplane.policies.violations import record_findings
from controlplane.storage import object_store

logger = logging.getLogger(__name__)

# How long a claimed removal may take before the reaper assumes its remover died.
REMOVAL_LEASE = timedelta(minutes=10)


class DatasetError(Exception):
    """A request the caller can fix; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, *, status: int = 400, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.fields = fields or {}


def version_number_take(dataset: Dataset) -> int:
    """The next version number of `dataset`, taken for good (call inside a transaction).

    The dataset row stays locked until the caller's transaction ends, so two uploads (or an
    upload and a pipeline job) never get the same number. If that transaction rolls back,
    so does the counter: a number is only spent on a version that existed.
    """
    locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
    # The highest row is consulted too, for versions written before the counter existed.
    highest = locked.versions.aggregate(n=Max("number"))["n"] or 0
    number = max(locked.last_version_number, highest) + 1
    Dataset.objects.filter(pk=dataset.pk).update(last_version_number=number)
    dataset.last_version_number = number
    return number


def version_mark_ready(
    version: DatasetVersion,
    actor: User | None,
    *,
    action: str,
    claimed_state: str | None = None,
    payload: dict | None = None,
    completion_digest: str = "",
) -> bool:
    """Make the version ready and audit it; False if it left `claimed_state` meanwhile."""
    with transaction.atomic():
        if claimed_state is not None:
            locked = (
                DatasetVersion.objects.select_for_update()
                .filter(pk=version.pk, state=claimed_state)
                .first()
            )
            if locked is None:
                return False
        files = list(version.files.all())
        version.state = VersionState.READY
        version.ready_at = timezone.now()
        version.upload_expires_at = None
        version.byte_count = sum(f.size for f in files)
        version.completion_digest = completion_digest
        version.save(
            update_fields=[
                "state",
                "ready_at",
                "upload_expires_at",
                "byte_count",
                "completion_digest",
            ]
        )
        audit_append(
            project=version.dataset.project,
            actor=actor,
            action=action,
            artifact=version,
            payload={
                "dataset_id": version.dataset_id,
                "number": version.number,
                "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in files],
                **(payload or {}),
            },
        )
        _ready_gate(version, actor)
        # A raw upload of a dataset with a subject field: its subject index is built by
        # the control worker once this commits (datasets/subject_index.py).
        index_soon(version, files)
    return True


def _ready_gate(version: DatasetVersion, actor: User | None) -> None:
    """Ask the policy about the version now ready. Its bytes are checked already, so a
    refusal cannot undo them: it is audited on the version and opened as violations (the
    version's page shows them; training on it meets the job gate)."""
    project = version.dataset.project
    decision = enforce(
        project=project,
        gate=Gate.DATASET_READY,
        subject=lambda: dataset_facts([version.pk])[version.pk],
        actor=actor,
        artifact=version,
        raise_denied=False,
    )
    if decision.denials:
        record_findings(
            project=project, findings=decision.denials, policy_label=decision.policy.label
        )


def version_claim_removal(
    version: DatasetVersion, *, from_states: list[str], reason: str, expired_before=None
) -> bool:
    """Claim the version for removal if it is in one of `from_states`; True if we got it."""
    claim = DatasetVersion.objects.filter(pk=version.pk, state__in=from_states)
    if expired_before is not None:
        # The reaper takes over only what is past its deadline; the deadline it sets
        # stops a second reaper from taking the same version at the same time.
        claim = claim.filter(upload_expires_at__lt=expired_before)
    claimed = claim.update(
        state=VersionState.REMOVING,
        upload_expires_at=timezone.now() + REMOVAL_LEASE,
        removal_reason=reason[:300],
    )
    return claimed == 1


def version_remove_claimed(version: DatasetVersion, *, actor: User | None) -> bool:
    """Remove a version claimed by `version_claim_removal`: objects, then rows and audit.

    Returns False when another remover finished first. Store errors propagate and leave
    the version `removing`, for the reaper to finish once its lease runs out.
    """
    store = object_store()
    files = list(DatasetFile.objects.filter(version_id=version.pk).order_by("id"))
    for file in files:
        if file.upload_id:
            store.multipart_abort(file.object_key, file.upload_id)
        store.delete(file.object_key)
    with transaction.atomic():
        locked = (
            DatasetVersion.objects.select_for_update()
            .select_related("dataset__project")
            .filter(pk=version.pk, state=VersionState.REMOVING)
            .first()
        )
        if locked is None:
            return False
        audit_append(
            project=locked.dataset.project,
            actor=actor,
            action="dataset_version.removed",
            artifact=locked,
            payload={
                "dataset_id": locked.dataset_id,
                "number": locked.number,
                "reason": locked.removal_reason,
                "files": [
                    {"name": f.name, "object_key": f.object_key, "size": f.size} for f in files
                ],
            },
        )
        DatasetFile.objects.filter(version_id=locked.pk).delete()
        locked.parents.clear()
        locked.delete()
    logger.info(
        "dataset %s version %s removed: %s", locked.dataset_id, locked.number, locked.removal_reason
    )
    return True


def version_remove(
    version: DatasetVersion, *, actor: User | None, from_states: list[str], reason: str
) -> bool:
    """Claim and remove in one go; False if the version was not in `from_states`."""
    if not version_claim_removal(version, from_states=from_states, reason=reason):
        return False
    version_remove_claimed(version, actor=actor)
    return True
