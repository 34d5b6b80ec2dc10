"""What the API and the pages show of a budget, a quota, a rate card and a webhook: one
shape for both, built from the selectors."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from controlplane.finops import selectors
from controlplane.finops.alerts import alerts_this_month
from controlplane.finops.models import OrgWebhook, RateCard
from controlplane.finops.rates import cents
from controlplane.orgs.models import Organisation
from controlplane.projects.models import Project


def budget_summary(project: Project, *, today: dt.date | None = None) -> dict[str, Any]:
    today = today or timezone.now().date()
    month = selectors.month_start(today)
    budget = selectors.budget_for(project, month)
    spend = selectors.project_spend(project, month)
    card = selectors.current_rate_card(project.organisation)
    percent = None
    if budget is not None and budget.amount > 0:
        percent = round(float(spend.total / budget.amount * 100), 1)
    return {
        "project": project.pk,
        "month": month.strftime("%Y-%m"),
        "currency": card.currency if card else None,
        "budget": None
        if budget is None
        else {
            "amount": str(cents(budget.amount)),
            "hard_stop": budget.hard_stop,
            "recurring": budget.recurring,
            "set_for": budget.month.strftime("%Y-%m"),
            "updated_at": budget.updated_at,
        },
        "spent": {
            "compute": str(cents(spend.compute)),
            "storage": str(cents(spend.storage)),
            "serving": str(cents(spend.serving)),
            "total": str(cents(spend.total)),
        },
        "percent": percent,
        "exceeded": budget is not None and spend.total >= budget.amount and spend.total > 0,
        "alerts": [
            {"threshold": a.threshold, "spent": str(cents(a.spent)), "at": a.created_at}
            for a in alerts_this_month(project, today=today)
        ],
        "usage": _month_usage(project, month),
    }


def _month_usage(project: Project, month: dt.date) -> dict[str, Any]:
    """The job attempts that started in the month: what the overview's hours link to."""
    usage = selectors.project_usage(project, *selectors.month_bounds(month))
    return {
        "attempts": usage["attempts"],
        "gpu_hours": round(usage["gpu_hours"], 3),
        "gpu_util_mean": usage["gpu_util_mean"],
        "cpu_hours": round(usage["cpu_hours"], 3),
        "wall_hours": round(usage["wall_seconds"] / 3600, 3),
    }


def quota_summary(project: Project) -> dict[str, Any]:
    quota = selectors.quota_of(project)
    holding = list(selectors.gpu_jobs_holding(project.pk).values_list("params", flat=True))
    held = list(selectors.gpu_jobs_held(project.pk).values_list("pk", flat=True))
    return {
        "project": project.pk,
        "max_concurrent_gpu_jobs": quota.max_concurrent_gpu_jobs if quota else None,
        "max_gpus": quota.max_gpus if quota else None,
        "gpu_jobs": len(holding),
        "gpus": sum(selectors.gpus_of(params) for params in holding),
        "held_jobs": held,
    }


def rate_card_body(card: RateCard) -> dict[str, Any]:
    return {
        "version": card.version,
        "currency": card.currency,
        "rates": card.rates,
        "effective_from": card.effective_from,
        "reason": card.reason,
        "created_by": card.created_by.username if card.created_by else None,
    }


def rate_card_summary(org: Organisation) -> dict[str, Any]:
    card = selectors.current_rate_card(org)
    return {
        "organisation": org.slug,
        "version": card.version if card else 0,
        "current": rate_card_body(card) if card else None,
    }


def webhook_summary(org: Organisation) -> dict[str, Any]:
    hook: OrgWebhook | None = selectors.webhook_of(org)
    return {
        "organisation": org.slug,
        "url": hook.url if hook else None,
        "enabled": hook.enabled if hook else False,
        "secret_set": bool(hook and hook.secret),
        "last_success_at": hook.last_success_at if hook else None,
        "last_failure_at": hook.last_failure_at if hook else None,
        "last_error": hook.last_error if hook else "",
        "deliveries": [
            {
                "id": d.pk,
                "event": d.event,
                "state": d.state,
                "attempts": d.attempts,
                "response_status": d.response_status,
                "last_error": d.last_error,
                "created_at": d.created_at,
                "next_attempt_at": d.next_attempt_at,
                "sent_at": d.sent_at,
            }
            for d in selectors.deliveries_of(org)
        ],
    }
