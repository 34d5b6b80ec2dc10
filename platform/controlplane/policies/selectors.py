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
SELECT version.id, version.number, policy.project_id, policy.organisation_id, version.created_at
FROM {versions} AS version JOIN {policies} AS policy ON policy.id = version.policy_id
WHERE version.number = policy.current_number AND ({scope})
ORDER BY policy.project_id IS NULL, policy.organisation_id IS NULL
LIMIT 1
"""
_PLATFORM = "(policy.project_id IS NULL AND policy.organisation_id IS NULL)"


def scope_ids(scope) -> tuple[int | None, int | None]:
    """(project id, organisation id) of a policy's scope: a Project (with the organisation
    whose default it follows), an Organisation, or None (the platform)."""
    if scope is None:
        return None, None
    if scope._meta.model_name == "organisation":
        return None, scope.pk
    return scope.pk, scope.organisation_id


def _own_filter(scope) -> dict:
    """The filter of the scope's own Policy row (not the ones it falls back on)."""
    if scope is None:
        return {"project__isnull": True, "organisation__isnull": True}
    if scope._meta.model_name == "organisation":
        return {"project__isnull": True, "organisation": scope}
    return {"project": scope}


def policy_in_force(scope) -> PolicySnapshot:
    """The newest version of the nearest policy: the project's own, else its organisation's
    default, else the platform default (``scope`` may be a Project, an Organisation or
    None). One small query: every gate asks it, so it is plain SQL, not the ORM's ~0.3 ms
    of compiling. Before anyone edited any of them, the built-in default (every rule off)."""
    from django.db import connection

    project_id, org_id = scope_ids(scope)
    conditions, params = [_PLATFORM], []
    if project_id is not None:
        conditions.append("policy.project_id = %s")
        params.append(project_id)
    if org_id is not None:
        conditions.append("policy.organisation_id = %s")
        params.append(org_id)
    sql = _IN_FORCE_SQL.format(
        versions=connection.ops.quote_name(PolicyVersion._meta.db_table),
        policies=connection.ops.quote_name(Policy._meta.db_table),
        scope=" OR ".join(conditions),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return BUILT_IN
    version_id, number, row_project_id, row_org_id, created_at = row
    key = (
        version_id,
        created_at,
    )  # an id a rolled-back test database gave out again differs in time
    snapshot = _SNAPSHOTS.get(key)
    if snapshot is None:
        rules = PolicyVersion.objects.values_list("rules", flat=True).get(pk=version_id)
        if row_project_id is not None:
            scope_name = "project"
        else:
            scope_name = "org" if row_org_id is not None else "platform"
        snapshot = PolicySnapshot(
            label=f"{scope_name} v{number}", version_id=version_id, rules=normalise(rules)
        )
        if len(_SNAPSHOTS) > 10_000:
            _SNAPSHOTS.clear()
        _SNAPSHOTS[key] = snapshot
    return snapshot


def own_policy(scope) -> Policy | None:
    return Policy.objects.filter(**_own_filter(scope)).first()


def policy_versions(scope) -> QuerySet[PolicyVersion]:
    """The history of the scope's own policy (empty while it follows another)."""
    own = {f"policy__{name}": value for name, value in _own_filter(scope).items()}
    return PolicyVersion.objects.filter(**own).select_related("created_by")


def policy_version(scope, number: int) -> PolicyVersion | None:
    """Version `number` of the scope's own policy (a project, an organisation, or None:
    the platform default)."""
    return policy_versions(scope).filter(number=number).first()


def current_number(scope) -> int:
    """The version number an edit must name as its base (0: no policy of its own yet)."""
    row = Policy.objects.filter(**_own_filter(scope)).values("current_number").first()
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
