"""GPU quotas and the budget's hard stop, as job creation meets them.

- `gpu_job_gate` (before the job's transaction): a GPU job is refused with a 409 when
  the project's budget for the month is spent and has a hard stop (`budget_exceeded`),
  when its quota allows no GPU jobs (`gpu_quota_zero`), or when the job alone needs more
  GPUs than the quota will ever allow (`gpu_quota_too_small`).
- `quota_admit` (in the job's transaction): a GPU job that does not fit next to the
  project's running and dispatched GPU jobs is kept QUEUED with held_for="quota" and no
  dispatch row.
- `quota_release` (control task after a GPU job of the project ends, after a quota
  change, and on the beat): the held jobs are dispatched in submission order while the
  oldest one fits; a large job at the head is never overtaken by smaller later ones.

Admission and release both lock the project's row first, then count: two jobs ending at
once run two releases one after the other, and the second sees what the first released,
so the quota is never exceeded. Lock order: the project row, then job rows, then the
audit chain. A release never runs while a job row is held (it is a separate task), so it
cannot deadlock with the event handlers, which take a job row first.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.finops import selectors
from controlplane.finops.errors import GpuJobRefused
from controlplane.finops.models import ProjectQuota
from controlplane.finops.rates import cents
from controlplane.jobs.models import Job, JobState
from controlplane.projects.models import Project

log = logging.getLogger(__name__)

HELD_FOR_QUOTA = "quota"
RELEASE_TASK = "control.finops_quota_release"
RELEASE_ALL_TASK = "control.finops_quota_release_all"


def gpu_job_gate(*, project: Project, queue: str, params: dict[str, Any]) -> None:
    """Refuse a GPU job the project may not start (GpuJobRefused, a 409); others pass."""
    if queue != selectors.GPU_QUEUE:
        return
    _hard_stop(project)
    quota = selectors.quota_of(project)
    if quota is None:
        return
    if quota.max_concurrent_gpu_jobs == 0 or quota.max_gpus == 0:
        raise GpuJobRefused(
            f"project {project.slug} has a GPU quota of 0: it may not run GPU jobs; "
            "ask an admin of its organisation to raise the quota",
            code="gpu_quota_zero",
            details={"quota": _quota_body(quota)},
        )
    needed = selectors.gpus_of(params)
    if quota.max_gpus is not None and needed > quota.max_gpus:
        raise GpuJobRefused(
            f"the job needs {needed} GPUs and project {project.slug} may hold at most "
            f"{quota.max_gpus}; ask for fewer devices or a larger quota",
            code="gpu_quota_too_small",
            details={"quota": _quota_body(quota), "gpus": needed},
        )


def _hard_stop(project: Project) -> None:
    today = timezone.now().date()
    budget = selectors.budget_for(project, today)
    if budget is None or not budget.hard_stop:
        return
    spent = selectors.project_spend(project, today).total
    if spent < budget.amount:
        return
    card = selectors.current_rate_card(project.organisation)
    currency = card.currency if card else ""
    month = selectors.month_start(today).strftime("%Y-%m")
    raise GpuJobRefused(
        f"the budget of project {project.slug} for {month} is spent "
        f"({cents(spent)} of {cents(budget.amount)} {currency}) and stops new GPU jobs; "
        "an owner or an organisation admin may raise it",
        code="budget_exceeded",
        details={
            "budget": {
                "project": project.pk,
                "month": month,
                "amount": str(cents(budget.amount)),
                "spent": str(cents(spent)),
                "currency": currency,
                "hard_stop": True,
            }
        },
    )


def _quota_body(quota: ProjectQuota) -> dict[str, int | None]:
    return {
        "max_concurrent_gpu_jobs": quota.max_concurrent_gpu_jobs,
        "max_gpus": quota.max_gpus,
    }


def _fits(quota: ProjectQuota | None, holding: list[dict[str, Any]], params: Any) -> bool:
    if quota is None:
        return True
    if (
        quota.max_concurrent_gpu_jobs is not None
        and len(holding) + 1 > quota.max_concurrent_gpu_jobs
    ):
        return False
    if quota.max_gpus is not None:
        used = sum(selectors.gpus_of(params) for params in (j["params"] for j in holding))
        if used + selectors.gpus_of(params) > quota.max_gpus:
            return False
    return True


def quota_admit(job: Job) -> bool:
    """In the new job's transaction: True when it may be dispatched now; else it is
    marked held for the quota (the caller does not dispatch it)."""
    if job.queue != selectors.GPU_QUEUE:
        return True
    Project.objects.select_for_update().filter(pk=job.project_id).get()
    quota = selectors.quota_of(job.project_id)
    if quota is None:
        return True
    holding = list(
        selectors.gpu_jobs_holding(job.project_id).exclude(pk=job.pk).values("pk", "params")
    )
    # Jobs already waiting go first: a new job does not overtake them.
    waiting = selectors.gpu_jobs_held(job.project_id).exclude(pk=job.pk).exists()
    if not waiting and _fits(quota, holding, job.params):
        return True
    Job.objects.filter(pk=job.pk).update(held_for=HELD_FOR_QUOTA)
    job.held_for = HELD_FOR_QUOTA
    return False


def quota_release_soon(project_id: int) -> None:
    """After the caller commits: ask the control worker to release held jobs."""

    def send() -> None:
        from controlplane.finops.queueing import send_control_task

        send_control_task(RELEASE_TASK, [project_id])

    transaction.on_commit(send, robust=True)


def on_job_terminal(job: Job) -> None:
    """A job reached a final state (in the caller's transaction): a GPU job frees a slot."""
    if job.queue == selectors.GPU_QUEUE:
        quota_release_soon(job.project_id)


def quota_release(project_id: int) -> list[int]:
    """Dispatch the project's held jobs, oldest first, while the oldest fits. Returns
    the jobs released."""
    from controlplane.jobs.services.lifecycle import dispatch_after_commit

    released: list[int] = []
    with transaction.atomic():
        project = Project.objects.select_for_update().filter(pk=project_id).first()
        if project is None:
            return released
        quota = selectors.quota_of(project_id)
        holding = list(selectors.gpu_jobs_holding(project_id).values("pk", "params"))
        now = timezone.now()
        for job in selectors.gpu_jobs_held(project_id).select_for_update(of=("self",)):
            if quota is not None and not _fits(quota, holding, job.params):
                break
            Job.objects.filter(pk=job.pk).update(held_for="", dispatched_at=now)
            job.held_for = ""
            holding.append({"pk": job.pk, "params": job.params})
            released.append(job.pk)
            dispatch_after_commit(job)
        for job_id in released:
            audit_append(
                project=project,
                actor=None,
                action="job.quota_released",
                artifact=("job", job_id),
                payload={"quota": _quota_body(quota) if quota else None},
            )
    return released


def quota_release_all() -> int:
    """The beat's pass, in case a release message was lost: every project with held jobs."""
    projects = (
        Job.objects.filter(state=JobState.QUEUED, held_for=HELD_FOR_QUOTA)
        .values_list("project_id", flat=True)
        .distinct()
    )
    total = 0
    for project_id in sorted(set(projects)):
        try:
            total += len(quota_release(project_id))
        except Exception:  # noqa: BLE001 - one project must not stop the pass
            log.exception("releasing held jobs of project %s failed", project_id)
    return total
