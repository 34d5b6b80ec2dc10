"""Reads: the policy in force for a project, its history, waivers, violations, holds."""

from __future__ import annotations

from django.db.models import QuerySet
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


# Policy versions never change once written, so a process keeps their parsed rules.
_SNAPSHOTS: dict[int, PolicySnapshot] = {}
_IN_FORCE_SQL = """
SELECT version.id, version.number, policy.project_id, version.created_at
FROM {versions} AS version JOIN {policies} AS policy ON policy.id = version.policy_id
WHERE version.number = policy.current_number AND ({scope})
ORDER BY policy.project_id IS NULL
LIMIT 1
"""


def policy_in_force(project) -> PolicySnapshot:
    """The project's own policy's newest version, else the platform default's (one small
    query: every gate asks it, so it is plain SQL, not the ORM's ~0.3 ms of compiling);
    before anyone edited either, the built-in default (every rule off)."""
    from django.db import connection

    scope, params = "policy.project_id IS NULL", []
    if project is not None:
        scope, params = "policy.project_id = %s OR policy.project_id IS NULL", [project.pk]
    sql = _IN_FORCE_SQL.format(
        versions=connection.ops.quote_name(PolicyVersion._meta.db_table),
        policies=connection.ops.quote_name(Policy._meta.db_table),
        scope=scope,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return BUILT_IN
    version_id, number, project_id, created_at = row
    key = (
        version_id,
        created_at,
    )  # an id a rolled-back test database gave out again differs in time
    snapshot = _SNAPSHOTS.get(key)
    if snapshot is None:
        rules = PolicyVersion.objects.values_list("rules", flat=True).get(pk=version_id)
        scope_name = "platform" if project_id is None else "project"
        snapshot = PolicySnapshot(
            label=f"{scope_name} v{number}", version_id=version_id, rules=normalise(rules)
        )
        if len(_SNAPSHOTS) > 10_000:
            _SNAPSHOTS.clear()
        _SNAPSHOTS[key] = snapshot
    return snapshot


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
