"""Reads: the policy in force for a project, its history, waivers, violations, holds."""

from __future__ import annotations

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from controlplane.policies.decide import PolicySnapshot
from controlplane.policies.models import (
    ErasureHold,
    Policy,
    PolicyScan,
    PolicyVersion,
    Violation,
    ViolationComment,
    ViolationState,
    Waiver,
)
from controlplane.policies.rules import default_rules, normalise

BUILT_IN = PolicySnapshot(label="platform v0", version_id=None, rules=default_rules())


def policy_in_force(project) -> PolicySnapshot:
    """The project's own policy's newest version, else the platform default's (one query);
    before anyone edited either, the built-in default (every rule off)."""
    scope = Q(policy__project__isnull=True)
    if project is not None:
        scope |= Q(policy__project=project)
    row = (
        PolicyVersion.objects.filter(scope)
        .order_by(F("policy__project_id").desc(nulls_last=True), "-number")
        .values("pk", "number", "rules", "policy__project_id")
        .first()
    )
    if row is None:
        return BUILT_IN
    scope_name = "platform" if row["policy__project_id"] is None else "project"
    return PolicySnapshot(
        label=f"{scope_name} v{row['number']}", version_id=row["pk"], rules=normalise(row["rules"])
    )


def own_policy(project) -> Policy | None:
    return Policy.objects.filter(project=project).first()


def policy_versions(project) -> QuerySet[PolicyVersion]:
    """The history of the project's own policy (empty while it follows the default)."""
    if project is None:
        return PolicyVersion.objects.filter(policy__project__isnull=True).select_related(
            "created_by"
        )
    return PolicyVersion.objects.filter(policy__project=project).select_related("created_by")


def policy_version(project, number: int) -> PolicyVersion | None:
    """Version `number` of the project's own policy (None: of the platform default)."""
    return policy_versions(project).filter(number=number).first()


def current_number(project) -> int:
    """The version number an edit must name as its base (0: no policy of its own yet)."""
    row = Policy.objects.filter(project=project).values("current_number").first()
    if project is None:
        row = Policy.objects.filter(project__isnull=True).values("current_number").first()
    return row["current_number"] if row else 0


def waivers_of(project) -> QuerySet[Waiver]:
    return Waiver.objects.filter(project=project).select_related("granted_by", "revoked_by")


def active_waivers_of(project) -> QuerySet[Waiver]:
    return waivers_of(project).filter(revoked_at__isnull=True, expires_at__gt=timezone.now())


def waivers_for_subject(subject_type: str, subject_id: int) -> QuerySet[Waiver]:
    """Active waivers on one subject (shown wherever the subject appears)."""
    return Waiver.objects.filter(
        subject_type=subject_type,
        subject_id=subject_id,
        revoked_at__isnull=True,
        expires_at__gt=timezone.now(),
    ).select_related("granted_by")


def violations_of(project, *, state: str | None = ViolationState.OPEN) -> QuerySet[Violation]:
    rows = Violation.objects.filter(project=project).select_related("assigned_to", "resolved_by")
    return rows.filter(state=state) if state else rows


def holds_of(project, *, active: bool = True) -> QuerySet[ErasureHold]:
    rows = ErasureHold.objects.filter(project=project).select_related(
        "dataset_version__dataset", "placed_by", "released_by"
    )
    return rows.filter(released_at__isnull=True) if active else rows


def open_violations_of_subject(subject_type: str, subject_id: int) -> QuerySet[Violation]:
    """The open violations of one subject (its page shows them)."""
    return Violation.objects.filter(
        subject_type=subject_type, subject_id=subject_id, state=ViolationState.OPEN
    ).order_by("rule", "pk")


# -- one row of a project (the API's lookups; None: not in this project) ------------------


def waiver_in(project, waiver_id: int) -> Waiver | None:
    return waivers_of(project).filter(pk=waiver_id).first()


def hold_in(project, hold_id: int) -> ErasureHold | None:
    return holds_of(project, active=False).filter(pk=hold_id).first()


def violation_in(project, violation_id: int) -> Violation | None:
    return (
        violations_of(project, state=None).select_related("project").filter(pk=violation_id).first()
    )


def violations_filtered(project, *, state: str | None, rule: str | None) -> QuerySet[Violation]:
    rows = violations_of(project, state=state)
    return rows.filter(rule=rule) if rule else rows


def comments_of(violation: Violation) -> QuerySet[ViolationComment]:
    return violation.comments.select_related("author")


def scans_of(project) -> QuerySet[PolicyScan]:
    """A project's scans; project None: every scan (staff's platform-wide list)."""
    rows = PolicyScan.objects.select_related("requested_by")
    return rows.filter(project=project) if project is not None else rows


def scan_in(project, scan_id: int) -> PolicyScan | None:
    return scans_of(project).filter(pk=scan_id).first()
