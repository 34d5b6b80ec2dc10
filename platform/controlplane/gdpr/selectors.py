"""Reads of data-subject requests: lists, one request, its identifiers as a role sees them."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from controlplane.gdpr import identifiers as ids
from controlplane.gdpr.deadlines import countdown
from controlplane.gdpr.models import OPEN_STATES, RequestState, SubjectRequest


def _rows() -> QuerySet[SubjectRequest]:
    children = SubjectRequest.objects.select_related("project").order_by("project_id", "pk")
    return SubjectRequest.objects.select_related(
        "project__organisation", "filed_by", "reviewed_by", "extended_by", "parent__project"
    ).prefetch_related("identifiers", Prefetch("children", queryset=children))


def requests_of(project, *, state: str | None = None) -> QuerySet[SubjectRequest]:
    rows = _rows().filter(project=project)
    return rows.filter(state=state) if state else rows


def pending_review_of(project) -> QuerySet[SubjectRequest]:
    """The review queue: oldest deadline first."""
    return requests_of(project, state=RequestState.PENDING_REVIEW).order_by("deadline_at", "id")


def request_in(project, request_id: int) -> SubjectRequest | None:
    """The request when it belongs to `project` (another project's is not found)."""
    return _rows().filter(project=project, pk=request_id).first()


def requests_for_subject(project, subject_hash: str) -> QuerySet[SubjectRequest]:
    """Every request of `project` about the subject with this keyed hash."""
    return requests_of(project).filter(identifiers__subject_hash=subject_hash).distinct()


def identifiers_clear(request: SubjectRequest) -> list[ids.Identifier]:
    """The subject's identifiers in clear, for the job (and reviewers' pages)."""
    return [
        ids.Identifier(row.type, ids.unseal(request.project_id, row.value_token))
        for row in request.identifiers.all()
    ]


def identifiers_shown(request: SubjectRequest, *, clear: bool) -> list[dict[str, str]]:
    """[{"type", "value", "subject_hash"}]: the value in clear for owners and compliance
    officers (`clear`), masked ("a***@example.com") for everyone else."""
    shown = []
    for row in request.identifiers.all():
        value = ids.unseal(request.project_id, row.value_token)
        shown.append(
            {
                "type": row.type,
                "value": value if clear else ids.masked(row.type, value),
                "subject_hash": row.subject_hash,
            }
        )
    return shown


def deadline_of(request: SubjectRequest) -> dict[str, object]:
    """{"open", "overdue", "text"}: the countdown a page shows ("12 days left")."""
    if request.state not in OPEN_STATES:
        return {"open": False, "overdue": False, "text": ""}
    now = timezone.localtime()
    overdue, text = countdown(timezone.localtime(request.deadline_at), now)
    return {"open": True, "overdue": overdue, "text": text}


def children_shown(request: SubjectRequest, user) -> list[dict[str, object]]:
    """An organisation request's children as `user` sees them: each with its deadline and
    whether `user` may open its project (only then is it linked)."""
    from controlplane.projects.selectors import projects_visible_to

    children = list(request.children.all())
    openable = set(
        projects_visible_to(user)
        .filter(pk__in=[child.project_id for child in children])
        .values_list("pk", flat=True)
    )
    return [
        {"r": child, "openable": child.project_id in openable, "deadline": deadline_of(child)}
        for child in children
    ]


def parent_openable(request: SubjectRequest, user) -> bool:
    """Whether `user` may open the project of the request's parent (then it is linked)."""
    from controlplane.projects.selectors import projects_visible_to

    if not request.parent_id:
        return False
    return projects_visible_to(user).filter(pk=request.parent.project_id).exists()
