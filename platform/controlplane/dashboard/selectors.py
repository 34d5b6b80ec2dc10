"""The overview an IT leader opens every Monday: one organisation's figures, as the user
may see them (finops.overview_selectors.OverviewScope).

Money, usage and storage come from finops/overview_selectors.py; this module adds the jobs,
the models in production with their lineage risk, and compliance, then puts the sections
together for the page, its CSV exports and the API. Each section is a few aggregate
queries whatever the number of rows behind it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import (
    Avg,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Subquery,
    Value,
)
from django.db.models.functions import Greatest
from django.utils import timezone

from controlplane.finops.models import JobAttemptUsage
from controlplane.finops.overview_selectors import OverviewScope
from controlplane.gdpr.models import OPEN_STATES, ErasedDataFlag, RequestState, SubjectRequest
from controlplane.jobs.models import DispatchState, Job, JobDispatch, JobMetric, JobState
from controlplane.policies.models import SubjectType, Violation, ViolationState
from controlplane.policies.page_selectors import OVERVIEW_DAYS as POLICY_OVERVIEW_DAYS
from controlplane.policies.page_selectors import overview as compliance_overview
from controlplane.projects.models import Project
from controlplane.registry.models import (
    ModelAlias,
    ModelEvaluation,
    PromotionRequest,
    PromotionState,
)
from controlplane.serving.models import Deployment, DeploymentState

JOB_WINDOW_DAYS = 30  # success rate and time to first metric
COMPLIANCE_DAYS = POLICY_OVERVIEW_DAYS  # denials counted over this many days
PRODUCTION_ALIASES = ("production", "prod")
LIST_LIMIT = 20  # rows of a list shown on the page; the CSV export has them all


# -- jobs --------------------------------------------------------------------------------


class QueueReason:
    QUOTA = "quota"  # held by the project's GPU quota (finops)
    CAPACITY = "capacity"  # no live worker has the devices it needs (jobs/capacity.py)
    DISPATCH = "waiting dispatch"  # not yet handed to the broker (outbox retrying)
    NO_WORKER = "no worker"  # handed to the broker, no worker of its queue took it


def _queued_jobs(scope: OverviewScope):
    dispatch = JobDispatch.objects.filter(job_id=OuterRef("pk"), attempt=OuterRef("attempt"))
    return (
        Job.objects.filter(project_id__in=scope.project_ids, state=JobState.QUEUED)
        .annotate(dispatch_state=Subquery(dispatch.values("state")[:1]))
        .order_by("created_at", "pk")
    )


def queue_reason(held_for: str, dispatch_state: str | None) -> str:
    if held_for == "quota":
        return QueueReason.QUOTA
    if held_for == "capacity":
        return QueueReason.CAPACITY
    if dispatch_state == DispatchState.SENT:
        return QueueReason.NO_WORKER
    return QueueReason.DISPATCH


def queued_jobs(scope: OverviewScope, limit: int | None = None) -> list[dict]:
    now = timezone.now()
    rows = _queued_jobs(scope).values_list(
        "pk",
        "project_id",
        "kind",
        "queue",
        "created_at",
        "held_for",
        "held_reason",
        "dispatch_state",
    )
    if limit is not None:
        rows = rows[:limit]
    return [
        {
            "job": pk,
            "project_id": project_id,
            "project": scope.projects[project_id].slug,
            "kind": kind,
            "queue": queue,
            "queued_at": created,
            "waiting_minutes": int((now - created).total_seconds() // 60),
            "reason": queue_reason(held_for, dispatch_state),
            # In words for a job held for capacity: "needs 8 GPUs; largest worker has 4".
            "detail": held_reason,
        }
        for pk, project_id, kind, queue, created, held_for, held_reason, dispatch_state in rows
    ]


@dataclass(frozen=True)
class JobFigures:
    running: int
    queued: int
    queued_by_reason: dict[str, int]
    succeeded: int  # finished in the window
    failed: int
    mean_seconds_to_first_metric: float | None
    jobs_with_metrics: int

    @property
    def success_rate(self) -> float | None:
        """Succeeded / (succeeded + failed) over the window; cancelled jobs do not count."""
        finished = self.succeeded + self.failed
        return round(self.succeeded / finished * 100, 1) if finished else None


def job_figures(scope: OverviewScope, now: dt.datetime) -> JobFigures:
    since = now - dt.timedelta(days=JOB_WINDOW_DAYS)
    jobs = Job.objects.filter(project_id__in=scope.project_ids)
    # Running jobs (the (project, state) index) and those finished in the window (the
    # finished_at index: a month of jobs, not the whole history), counted by state.
    counts = dict(
        jobs.filter(
            Q(state=JobState.RUNNING)
            | Q(finished_at__gte=since, state__in=[JobState.SUCCEEDED, JobState.FAILED])
        )
        .values_list("state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    reasons = {
        QueueReason.QUOTA: 0,
        QueueReason.CAPACITY: 0,
        QueueReason.DISPATCH: 0,
        QueueReason.NO_WORKER: 0,
    }
    for held_for, dispatch_state, n in (
        _queued_jobs(scope).values_list("held_for", "dispatch_state").annotate(n=Count("pk"))
    ).order_by():
        reasons[queue_reason(held_for, dispatch_state)] += n
    first = (
        JobMetric.objects.filter(job_id=OuterRef("job_id"))
        .order_by("recorded_at")
        .values("recorded_at")[:1]
    )
    # From the first attempt's start (the usage table, indexed on started_at): a resumed
    # job's Job.started_at is its latest attempt's.
    delays = (
        JobAttemptUsage.objects.filter(
            project_id__in=scope.project_ids, attempt=1, started_at__gte=since
        )
        .annotate(first_metric=Subquery(first))
        .filter(first_metric__isnull=False)
        # Clamped at 0: a clock skew between worker and platform must not make it negative.
        .annotate(
            delay=Greatest(
                ExpressionWrapper(F("first_metric") - F("started_at"), DurationField()),
                Value(dt.timedelta(0)),
            )
        )
        .aggregate(mean=Avg("delay"), n=Count("pk"))
    )
    return JobFigures(
        running=counts.get(JobState.RUNNING, 0),
        queued=sum(reasons.values()),
        queued_by_reason=reasons,
        succeeded=counts.get(JobState.SUCCEEDED, 0),
        failed=counts.get(JobState.FAILED, 0),
        mean_seconds_to_first_metric=delays["mean"].total_seconds() if delays["n"] else None,
        jobs_with_metrics=delays["n"],
    )


# -- models in production ------------------------------------------------------------------


def production_models(scope: OverviewScope, now: dt.datetime) -> list[dict]:
    """Versions behind a production alias or a running deployment, with their lineage risk:
    trained on erased data, open policy violations, age of the latest evaluation."""
    served: dict[int, dict] = {}
    aliases = ModelAlias.objects.filter(
        model__project_id__in=scope.project_ids, name__in=PRODUCTION_ALIASES
    ).values_list("version_id", "name")
    for version_id, alias in aliases:
        served.setdefault(version_id, {"aliases": [], "deployments": []})["aliases"].append(alias)
    deployments = Deployment.objects.filter(
        project_id__in=scope.project_ids, state=DeploymentState.RUNNING
    ).values_list("target_version_id", "name")
    for version_id, name in deployments:
        served.setdefault(version_id, {"aliases": [], "deployments": []})["deployments"].append(
            name
        )
    if not served:
        return []
    from controlplane.registry.models import ModelVersion

    open_violations = (
        Violation.objects.filter(
            state=ViolationState.OPEN,
            subject_type=SubjectType.MODEL_VERSION,
            subject_id=OuterRef("pk"),
        )
        .order_by()
        .values("subject_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    last_evaluation = (
        ModelEvaluation.objects.filter(version_id=OuterRef("pk"), finished_at__isnull=False)
        .order_by("-finished_at")
        .values("finished_at")[:1]
    )
    versions = (
        ModelVersion.objects.filter(pk__in=served)
        .annotate(
            erased=Exists(ErasedDataFlag.objects.filter(model_version_id=OuterRef("pk"))),
            violations=Subquery(open_violations),
            evaluated_at=Subquery(last_evaluation),
            project_id=F("model__project_id"),
            model_name=F("model__name"),
        )
        .order_by("model__project_id", "model__name", "number")
    )
    rows = []
    for version in versions:
        age = None if version.evaluated_at is None else (now - version.evaluated_at).days
        rows.append(
            {
                "project_id": version.project_id,
                "project": scope.projects[version.project_id].slug,
                "model": version.model_name,
                "version": version.number,
                "aliases": sorted(served[version.pk]["aliases"]),
                "deployments": sorted(served[version.pk]["deployments"]),
                "trained_on_erased_data": version.erased,
                "open_violations": version.violations or 0,
                "evaluation_age_days": age,
            }
        )
    return rows


def risk_order(row: dict) -> tuple:
    """Riskiest first: trained on erased data, then open violations, then never or long
    ago evaluated."""
    age = row["evaluation_age_days"]
    return (
        not row["trained_on_erased_data"],
        -row["open_violations"],
        -(age if age is not None else 10**6),
    )


# -- compliance ----------------------------------------------------------------------------


def open_subject_requests(scope: OverviewScope, now: dt.datetime) -> list[dict]:
    rows = (
        SubjectRequest.objects.filter(project_id__in=scope.project_ids, state__in=OPEN_STATES)
        .order_by("deadline_at", "pk")
        .values_list("pk", "project_id", "kind", "state", "received_at", "deadline_at")
    )
    return [
        {
            "request": pk,
            "project_id": project_id,
            "project": scope.projects[project_id].slug,
            "kind": kind,
            "state": state,
            "received_at": received,
            "deadline_at": deadline,
            "days_left": (deadline - now).days,
            "overdue": deadline < now,
        }
        for pk, project_id, kind, state, received, deadline in rows
    ]


# The compliance queues a tile counts, and the project page that lists each one.
COMPLIANCE_QUEUES = {
    "subject_requests": "gdpr-requests",
    "pending_promotions": "registry-reviews",
    "requests_awaiting_review": "gdpr-review-queue",
}


# The queues whose totals are tiles (the open data-subject requests have their own table).
COMPLIANCE_TILES = ("pending_promotions", "requests_awaiting_review")


def compliance_queues_by_project(scope: OverviewScope) -> dict[int, dict[str, int]]:
    """{project id: {queue: count}} for the projects with anything waiting: open
    data-subject requests, promotions awaiting approval, requests awaiting review."""
    ids = scope.project_ids
    counted = {
        "subject_requests": SubjectRequest.objects.filter(
            project_id__in=ids, state__in=OPEN_STATES
        ).values_list("project_id"),
        "pending_promotions": PromotionRequest.objects.filter(
            model__project_id__in=ids, state=PromotionState.PENDING
        ).values_list("model__project_id"),
        "requests_awaiting_review": SubjectRequest.objects.filter(
            project_id__in=ids, state=RequestState.PENDING_REVIEW
        ).values_list("project_id"),
    }
    queues: dict[int, dict[str, int]] = {}
    for queue, rows in counted.items():
        for project_id, count in rows.annotate(n=Count("pk")).order_by():
            queues.setdefault(project_id, dict.fromkeys(COMPLIANCE_QUEUES, 0))[queue] = count
    return queues


def violations_by_project(scope: OverviewScope) -> dict[int, int]:
    return dict(
        Violation.objects.filter(project_id__in=scope.project_ids, state=ViolationState.OPEN)
        .values_list("project_id")
        .annotate(n=Count("pk"))
        .order_by()
    )


def compliance_by_project(scope: OverviewScope) -> list:
    """Each project's policy, open violations by rule, waivers, holds and recent denials
    (policies.page_selectors), for the projects of the scope: those with the most open
    violations first."""
    rows = compliance_overview(projects=Project.objects.filter(pk__in=scope.project_ids))
    return sorted(rows, key=lambda row: -row.open_violations)
