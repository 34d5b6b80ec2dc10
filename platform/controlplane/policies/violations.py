"""Violations: what exists and the current policy would refuse.

Opened (or refreshed) by the scan and by gates that cannot refuse (a dataset version
whose bytes are already checked); resolved automatically when a scan finds the subject no
longer violates, or by hand with a reason. Assigning, commenting and resolving are audited.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from controlplane.policies.decide import Finding
from controlplane.policies.errors import Conflict, InvalidPolicy, NotAllowed, NotFound
from controlplane.policies.models import Violation, ViolationComment, ViolationState
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of

MAX_TEXT = 4000


@dataclass(frozen=True)
class Recorded:
    opened: int  # new open violations
    refreshed: int  # open ones found again (reason, fix, policy version, last seen updated)


# Rows per statement when thousands of findings are written at once (a scan).
_BATCH = 2000


def record_findings(*, project, findings: Iterable[Finding], policy_label: str) -> Recorded:
    """Open a violation per (rule, subject) found, or refresh the open one (reason, fix,
    policy version, last seen). Several findings of one rule on one subject (a licence
    and a source) make one violation whose reason lists both.

    In bulk, so that a scan of 10,000 subjects costs a few statements, not three per
    finding: the open rows are read once, refreshed with one UPDATE (plus one per batch
    of rows whose text changed) and the new ones inserted with ON CONFLICT DO NOTHING.
    Safe against a concurrent scan or gate: the partial unique index lets only one open
    row exist per (rule, subject); an insert that loses the race leaves the winner's row,
    which says the same thing."""
    merged = _merge(findings)
    if not merged:
        return Recorded(0, 0)
    now = timezone.now()
    open_rows = {
        (row.rule, row.subject_type, row.subject_id): row
        for row in Violation.objects.filter(
            project=project,
            state=ViolationState.OPEN,
            subject_id__in={key[2] for key in merged},
        ).only("pk", "rule", "subject_type", "subject_id", "subject_label", "reason", "fix")
    }
    seen, changed, new = [], [], []
    for key, (label, reason, fix) in merged.items():
        row = open_rows.get(key)
        if row is None:
            new.append(
                Violation(
                    project=project,
                    rule=key[0],
                    subject_type=key[1],
                    subject_id=key[2],
                    subject_label=label,
                    reason=reason,
                    fix=fix,
                    policy_version=policy_label,
                    last_seen_at=now,
                )
            )
            continue
        seen.append(row.pk)
        if (row.subject_label, row.reason, row.fix) != (label, reason, fix):
            row.subject_label, row.reason, row.fix = label, reason, fix
            changed.append(row)
    with transaction.atomic():
        for start in range(0, len(seen), _BATCH):
            Violation.objects.filter(pk__in=seen[start : start + _BATCH]).update(
                policy_version=policy_label, last_seen_at=now
            )
        Violation.objects.bulk_update(
            changed, ["subject_label", "reason", "fix"], batch_size=_BATCH
        )
        Violation.objects.bulk_create(new, batch_size=_BATCH, ignore_conflicts=True)
    return Recorded(opened=len(new), refreshed=len(seen))


def _merge(findings: Iterable[Finding]) -> dict[tuple[str, str, int], tuple[str, str, str]]:
    """{(rule, subject type, subject id): (label, reason, fix)}, one entry per key."""
    merged: dict[tuple[str, str, int], tuple[str, list[str], list[str]]] = {}
    for finding in findings:
        if finding.subject.id is None:
            continue
        key = (finding.rule.value, finding.subject.type.value, finding.subject.id)
        label, reasons, fixes = merged.setdefault(key, (finding.subject.label[:300], [], []))
        if finding.reason not in reasons:
            reasons.append(finding.reason)
        if finding.fix and finding.fix not in fixes:
            fixes.append(finding.fix)
    return {
        key: (label, "; ".join(reasons), "; ".join(fixes))
        for key, (label, reasons, fixes) in merged.items()
    }


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
    *,
    project,
    still_open: set[tuple[str, str, int]],
    scanned: set[tuple[str, int]] | None,
    seen_before: datetime | None = None,
    waived: dict[tuple[str, str, int], int] | None = None,
) -> int:
    """Resolve (as the scan) the open violations of scanned subjects (None: every subject
    of the project) that the scan no longer found; one audit event per project for the
    batch. Returns how many.

    `seen_before`: only rows last seen before it (the scan's start), so a violation a
    gate opened while the scan ran is left for the next scan to judge. `waived`: keys an
    active waiver covers {key: waiver id}; their resolution names the waiver."""
    from controlplane.audit.services import audit_append

    rows = Violation.objects.filter(project=project, state=ViolationState.OPEN)
    if seen_before is not None:
        rows = rows.filter(last_seen_at__lt=seen_before)
    cleared = [
        row
        for row in rows.values_list("pk", "rule", "subject_type", "subject_id", "subject_label")
        if (scanned is None or (row[2], row[3]) in scanned)
        and (row[1], row[2], row[3]) not in still_open
    ]
    if not cleared:
        return 0
    waived = waived or {}
    by_waiver: dict[int | None, list[int]] = {}
    for row in cleared:
        by_waiver.setdefault(waived.get((row[1], row[2], row[3])), []).append(row[0])
    now = timezone.now()
    with transaction.atomic():
        for waiver_id, pks in by_waiver.items():
            resolution = (
                "the subject no longer violates the policy (found by a scan)"
                if waiver_id is None
                else f"waived: waiver {waiver_id} lets the subject pass (found by a scan)"
            )
            for start in range(0, len(pks), _BATCH):
                Violation.objects.filter(
                    pk__in=pks[start : start + _BATCH], state=ViolationState.OPEN
                ).update(state=ViolationState.RESOLVED, resolved_at=now, resolution=resolution)
        audit_append(
            project=project,
            actor=None,
            action="violation.cleared",
            artifact=("project", project.pk),
            payload={
                "violations": [
                    {
                        "id": row[0],
                        "rule": row[1],
                        "subject": row[4],
                        **(
                            {"waiver": waived[(row[1], row[2], row[3])]}
                            if (row[1], row[2], row[3]) in waived
                            else {}
                        ),
                    }
                    for row in cleared[:500]
                ],
                "count": len(cleared),
            },
        )
    return len(cleared)
