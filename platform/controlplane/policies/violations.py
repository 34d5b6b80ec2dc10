"""Violations: what exists and the current policy would refuse.

Opened (or refreshed) by the scan and by gates that cannot refuse (a dataset version
whose bytes are already checked); resolved automatically when a scan finds the subject no
longer violates, or by hand with a reason. Assigning, commenting and resolving are audited.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.policies.decide import Finding
from controlplane.policies.errors import Conflict, InvalidPolicy, NotAllowed, NotFound
from controlplane.policies.models import Violation, ViolationComment, ViolationState
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of

MAX_TEXT = 4000


def record_findings(*, project, findings: Iterable[Finding], policy_label: str) -> list[Violation]:
    """Open a violation per (rule, subject) found, or refresh the open one (reason, fix,
    policy version, last seen). Safe against a concurrent scan: the partial unique index
    lets only one open row exist; the loser refreshes it."""
    now = timezone.now()
    rows = []
    for finding in findings:
        if finding.subject.id is None:
            continue
        key = dict(
            rule=finding.rule.value,
            subject_type=finding.subject.type.value,
            subject_id=finding.subject.id,
            state=ViolationState.OPEN,
        )
        values = dict(
            subject_label=finding.subject.label[:300],
            reason=finding.reason,
            fix=finding.fix,
            policy_version=policy_label,
            last_seen_at=now,
        )
        updated = Violation.objects.filter(**key).update(**values)
        if not updated:
            try:
                with transaction.atomic():
                    rows.append(Violation.objects.create(project=project, **key, **values))
                    continue
            except IntegrityError:
                Violation.objects.filter(**key).update(**values)
        rows.extend(Violation.objects.filter(**key))
    return rows


def _reviewer(actor, project, doing: str) -> None:
    if not role_allows(role_of(actor, project), Action.REVIEW):
        raise NotAllowed(f"{doing} needs the owner or compliance role in this project")


def _text(value, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise InvalidPolicy(f"{field} is required", fields={field: [f"1-{MAX_TEXT} characters"]})
    return value.strip()


def _audit(violation: Violation, actor, action: str, payload: dict) -> None:
    from controlplane.audit.services import audit_append

    audit_append(
        project=violation.project,
        actor=actor,
        action=action,
        artifact=violation,
        payload={
            "rule": violation.rule,
            "subject": {
                "type": violation.subject_type,
                "id": violation.subject_id,
                "label": violation.subject_label,
            },
            **payload,
        },
    )


def violation_assign(*, violation: Violation, actor, assignee) -> Violation:
    """Assign to a member of the project (None: unassign)."""
    project = violation.project
    _reviewer(actor, project, "assigning a violation")
    if assignee is not None and role_of(assignee, project) is None:
        raise NotFound(
            "that user is not a member of this project", fields={"assignee": ["not a member"]}
        )
    with transaction.atomic():
        locked = (
            Violation.objects.select_for_update().select_related("project").get(pk=violation.pk)
        )
        before = locked.assigned_to_id
        locked.assigned_to = assignee
        locked.save(update_fields=["assigned_to"])
        _audit(
            locked,
            actor,
            "violation.assigned",
            {"before": before, "after": assignee.pk if assignee is not None else None},
        )
    return locked


def violation_comment(*, violation: Violation, actor, text) -> ViolationComment:
    """Any member who can see the project may comment (engineers explain their fix)."""
    project = violation.project
    if role_of(actor, project) is None:
        raise NotFound("no such violation")
    text = _text(text, "text")
    with transaction.atomic():
        comment = ViolationComment.objects.create(violation=violation, author=actor, text=text)
        _audit(violation, actor, "violation.commented", {"comment": comment.pk})
    return comment


def violation_resolve(*, violation: Violation, actor, resolution) -> Violation:
    """Close an open violation by hand, with the reason (a scan reopens it if the subject
    still violates: resolving does not make a subject comply, a waiver or a fix does)."""
    _reviewer(actor, violation.project, "resolving a violation")
    resolution = _text(resolution, "resolution")
    with transaction.atomic():
        now = timezone.now()
        claimed = Violation.objects.filter(pk=violation.pk, state=ViolationState.OPEN).update(
            state=ViolationState.RESOLVED, resolved_at=now, resolved_by=actor, resolution=resolution
        )
        if claimed != 1:
            raise Conflict("this violation is already resolved")
        violation.refresh_from_db()
        _audit(violation, actor, "violation.resolved", {"resolution": resolution})
    return violation


def resolve_cleared(
    *, project, still_open: set[tuple[str, str, int]], scanned: set[tuple[str, int]]
) -> int:
    """Resolve (as the scan) the open violations of scanned subjects that the scan no
    longer found; one audit event per project for the batch. Returns how many."""
    from controlplane.audit.services import audit_append

    open_rows = Violation.objects.filter(project=project, state=ViolationState.OPEN).values_list(
        "pk", "rule", "subject_type", "subject_id", "subject_label"
    )
    cleared = [
        row
        for row in open_rows
        if (row[2], row[3]) in scanned and (row[1], row[2], row[3]) not in still_open
    ]
    if not cleared:
        return 0
    with transaction.atomic():
        Violation.objects.filter(
            pk__in=[row[0] for row in cleared], state=ViolationState.OPEN
        ).update(
            state=ViolationState.RESOLVED,
            resolved_at=timezone.now(),
            resolution="the subject no longer violates the policy (found by a scan)",
        )
        audit_append(
            project=project,
            actor=None,
            action="violation.cleared",
            artifact=("project", project.pk),
            payload={
                "violations": [
                    {"id": row[0], "rule": row[1], "subject": row[4]} for row in cleared[:500]
                ],
                "count": len(cleared),
            },
        )
    return len(cleared)
