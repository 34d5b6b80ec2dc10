"""`{% load finops_tags %}`: the budget banner of a project's pages and the job state
that says when a job waits for its project's GPU quota.

    {% budget_banner %}             in base.html: shown when `project` is in the context and
                                    its budget crossed 80% or 100% this month
    {{ job|job_state }}             "queued (quota)" for a job held by the quota,
                                    "queued (needs 8 GPUs; largest worker has 4)" for one
                                    no live worker can run (jobs/capacity.py)
"""

from __future__ import annotations

from django import template
from django.utils import timezone

from controlplane.finops.models import BudgetAlert
from controlplane.finops.rates import cents
from controlplane.finops.selectors import month_start

register = template.Library()


@register.inclusion_tag("finops/_budget_banner.html", takes_context=True)
def budget_banner(context) -> dict:
    project = context.get("project")
    if project is None or not getattr(project, "pk", None):
        return {}
    month = month_start(timezone.now().date())
    # One indexed query per project page: the highest threshold crossed this month.
    alert = (
        BudgetAlert.objects.filter(project_id=project.pk, month=month)
        .order_by("-threshold")
        .first()
    )
    if alert is None:
        return {}
    return {
        "alert": alert,
        "project": project,
        "spent": cents(alert.spent),
        "amount": cents(alert.amount),
    }


@register.filter
def job_state(job) -> str:
    if getattr(job, "state", "") == "queued" and getattr(job, "held_for", ""):
        return f"queued ({getattr(job, 'held_reason', '') or job.held_for})"
    return getattr(job, "state", "")
