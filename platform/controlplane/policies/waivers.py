"""Waivers (one rule, one subject, until an expiry) and erasure holds.

Only compliance officers grant and revoke waivers: the four-eyes idea again, since an
owner could otherwise wave through their own project. A subject of another project is
"not found", never "forbidden", so a waiver cannot probe other projects.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.policies.errors import Conflict, InvalidPolicy, NotAllowed, NotFound
from controlplane.policies.models import ErasureHold, SubjectType, Waiver
from controlplane.policies.rules import RULES
from controlplane.projects.models import Role
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of

MAX_WAIVER_DAYS = 366
MAX_TEXT = 2000
WAIVABLE = (
    SubjectType.DATASET_VERSION,
    SubjectType.JOB,
    SubjectType.MODEL_VERSION,
    SubjectType.DEPLOYMENT,
)


def subject_in(project, subject_type: str, subject_id: Any) -> tuple[Any, str]:
    """(the subject's row, its label) when it belongs to `project`, else NotFound."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelVersion
    from controlplane.serving.models import Deployment

    if subject_type not in WAIVABLE:
        choices = ", ".join(t.value for t in WAIVABLE)
        raise InvalidPolicy(
            f"subject_type must be one of {choices}", fields={"subject_type": [f"one of {choices}"]}
        )
    if isinstance(subject_id, bool) or not isinstance(subject_id, int) or subject_id < 1:
        raise InvalidPolicy("subject_id must be an id", fields={"subject_id": ["must be an id"]})
    if subject_type == SubjectType.DATASET_VERSION:
        row = DatasetVersion.objects.filter(pk=subject_id, dataset__project=project)
        row = row.select_related("dataset").first()
        label = row and f"{row.dataset.slug} v{row.number}"
    elif subject_type == SubjectType.JOB:
        row = Job.objects.filter(pk=subject_id, project=project).first()
        label = row and f"job {row.pk} ({row.kind})"
    elif subject_type == SubjectType.MODEL_VERSION:
        row = ModelVersion.objects.filter(pk=subject_id, model__project=project)
        row = row.select_related("model").first()
        label = row and f"{row.model.name} v{row.number}"
    else:
        row = Deployment.objects.filter(pk=subject_id, project=project).first()
        label = row and f"deployment {row.name}"
    if row is None:
        raise NotFound(f"no {subject_type.replace('_', ' ')} {subject_id} in this project")
    return row, label


def _compliance_officer(actor, project, doing: str) -> None:
    if role_of(actor, project) != Role.COMPLIANCE:
        raise NotAllowed(f"{doing} needs the compliance role in this project")


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise InvalidPolicy(f"{field} is required", fields={field: [f"1-{MAX_TEXT} characters"]})
    return value.strip()


def _expiry(value: Any) -> datetime:
    now = timezone.now()
    if not isinstance(value, datetime):
        raise InvalidPolicy(
            "expires_at must be a date and time", fields={"expires_at": ["a datetime"]}
        )
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    if value <= now:
        raise InvalidPolicy(
            "a waiver must expire in the future", fields={"expires_at": ["in the past"]}
        )
    if value > now + timedelta(days=MAX_WAIVER_DAYS):
        raise InvalidPolicy(
            f"a waiver lasts at most {MAX_WAIVER_DAYS} days",
            fields={"expires_at": [f"at most {MAX_WAIVER_DAYS} days ahead"]},
        )
    return value


def waiver_grant(
    *, project, actor, rule: Any, subject_type: Any, subject_id: Any, reason: Any, expires_at: Any
) -> Waiver:
    _compliance_officer(actor, project, "granting a waiver")
    if rule not in RULES:
        raise InvalidPolicy(
            f"unknown rule; the rules are {', '.join(RULES)}", fields={"rule": ["unknown rule"]}
        )
    _, label = subject_in(project, subject_type, subject_id)
    reason, expires_at = _text(reason, "reason"), _expiry(expires_at)
    from controlplane.audit.services import audit_append

    with transaction.atomic():
        waiver = Waiver.objects.create(
            project=project,
            rule=rule,
            subject_type=subject_type,
            subject_id=subject_id,
            subject_label=label,
            reason=reason,
            expires_at=expires_at,
            granted_by=actor,
        )
        audit_append(
            project=project,
            actor=actor,
            action="waiver.granted",
            artifact=(subject_type.replace("_", ""), subject_id),
            payload={
                "waiver": waiver.pk,
                "rule": rule,
                "subject": label,
                "reason": reason,
                "expires_at": expires_at.isoformat(),
            },
        )
    return waiver


def waiver_revoke(*, waiver: Waiver, actor, reason: Any = "") -> Waiver:
    _compliance_officer(actor, waiver.project, "revoking a waiver")
    from controlplane.audit.services import audit_append

    with transaction.atomic():
        claimed = Waiver.objects.filter(pk=waiver.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=actor
        )
        if claimed != 1:
            raise Conflict("this waiver is already revoked")
        waiver.refresh_from_db()
        audit_append(
            project=waiver.project,
            actor=actor,
            action="waiver.revoked",
            artifact=(waiver.subject_type.replace("_", ""), waiver.subject_id),
            payload={
                "waiver": waiver.pk,
                "rule": waiver.rule,
                "subject": waiver.subject_label,
                "reason": reason if isinstance(reason, str) else "",
            },
        )
    return waiver


def may_hold(actor, project) -> bool:
    """Owners and compliance officers of the project, and admins of its organisation (by
    membership): they approve the organisation-wide erasures whose holds land in every
    project of it (gdpr/organisation.py). The holds API still asks for the project role."""
    from controlplane.orgs.models import OrgRole
    from controlplane.orgs.selectors import org_role_of

    return (
        role_allows(role_of(actor, project), Action.REVIEW)
        or org_role_of(actor, project.organisation) == OrgRole.ADMIN
    )


def hold_place(
    *, project, actor, dataset_version_id: Any, reference: Any, reason: Any = ""
) -> ErasureHold:
    """Mark an approved erasure as pending on a dataset version (owners and compliance
    officers, admins of the organisation; the GDPR requests place and release holds
    themselves, as their reviewer)."""
    if not may_hold(actor, project):
        raise NotAllowed("placing an erasure hold needs the owner or compliance role")
    version, label = subject_in(project, SubjectType.DATASET_VERSION, dataset_version_id)
    reference = _text(reference, "reference")[:200]
    from controlplane.audit.services import audit_append

    with transaction.atomic():
        hold = ErasureHold.objects.create(
            project=project,
            dataset_version=version,
            reference=reference,
            reason=reason.strip() if isinstance(reason, str) else "",
            placed_by=actor,
        )
        audit_append(
            project=project,
            actor=actor,
            action="erasure_hold.placed",
            artifact=version,
            payload={"hold": hold.pk, "reference": reference, "version": label},
        )
    return hold


def hold_release(*, hold: ErasureHold, actor) -> ErasureHold:
    if not may_hold(actor, hold.project):
        raise NotAllowed("releasing an erasure hold needs the owner or compliance role")
    from controlplane.audit.services import audit_append

    with transaction.atomic():
        claimed = ErasureHold.objects.filter(pk=hold.pk, released_at__isnull=True).update(
            released_at=timezone.now(), released_by=actor
        )
        if claimed != 1:
            raise Conflict("this erasure hold is already released")
        hold.refresh_from_db()
        audit_append(
            project=hold.project,
            actor=actor,
            action="erasure_hold.released",
            artifact=hold.dataset_version,
            payload={"hold": hold.pk, "reference": hold.reference},
        )
    return hold
