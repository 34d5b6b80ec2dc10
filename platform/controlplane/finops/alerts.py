"""Budget alerts: at 80% and 100% of a project's budget for the month, once each.

Checked after usage changes (a debounced control task per project, `budget_check_soon`)
and by the beat over every project with a budget (a lost message costs minutes, not an
alert). An alert is a BudgetAlert row (unique per project, month and threshold: the
database decides a race between two checks), an audit event on the project's chain, and
a webhook delivery in the outbox (sent by the control worker, never here).
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.finops import selectors
from controlplane.finops.models import Budget, BudgetAlert
from controlplane.finops.rates import cents
from controlplane.projects.models import Project

log = logging.getLogger(__name__)

THRESHOLDS = (80, 100)  # percent of the month's budget
BUDGET_CHECK_TASK = "control.finops_budget_check"
BUDGETS_CHECK_ALL_TASK = "control.finops_budgets_check_all"
# Usage arrives with every heartbeat; one check per project per this many seconds is plenty.
DEBOUNCE_SECONDS = 30


def budget_check_soon(project_id: int) -> None:
    """Ask the control worker to check the project's budget, at most once per
    DEBOUNCE_SECONDS per project, after the caller's transaction commits."""

    def send() -> None:
        if not cache.add(f"finops:budget-check:{project_id}", 1, timeout=DEBOUNCE_SECONDS):
            return  # a check is already on its way; it will see this usage too
        from controlplane.finops.queueing import send_control_task

        send_control_task(BUDGET_CHECK_TASK, [project_id], countdown=5)

    transaction.on_commit(send, robust=True)


def budget_check(project_id: int, *, today: dt.date | None = None) -> list[BudgetAlert]:
    """Fire the thresholds the project's spend this month has crossed and that have not
    fired yet this month. Returns the alerts fired now."""
    today = today or timezone.now().date()
    month = selectors.month_start(today)
    budget = selectors.budget_for(project_id, month)
    if budget is None:
        return []
    spent = selectors.project_spend(project_id, month).total
    fired = []
    for threshold in THRESHOLDS:
        if spent <= 0 or spent < budget.amount * threshold / 100:
            continue
        if BudgetAlert.objects.filter(
            project_id=project_id, month=month, threshold=threshold
        ).exists():
            continue
        alert = _fire(budget, project_id, month, threshold, spent)
        if alert is not None:
            fired.append(alert)
    return fired


def _fire(
    budget: Budget, project_id: int, month: dt.date, threshold: int, spent: Decimal
) -> BudgetAlert | None:
    from controlplane.finops.webhooks import delivery_enqueue

    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                project_id=project_id,
                budget=budget,
                month=month,
                threshold=threshold,
                spent=spent,
                amount=budget.amount,
            )
            project = Project.objects.select_related("organisation").get(pk=project_id)
            payload = alert_payload(alert, project)
            audit_append(
                project=project,
                actor=None,
                action="finops.budget_alert",
                artifact=alert,
                payload=payload,
            )
            delivery_enqueue(org=project.organisation, event="budget.alert", payload=payload)
    except IntegrityError:
        return None  # another check fired it first
    return alert


def alert_payload(alert: BudgetAlert, project: Project) -> dict:
    card = selectors.current_rate_card(project.organisation)
    return {
        "project": {"id": project.pk, "slug": project.slug, "name": project.name},
        "organisation": project.organisation.slug,
        "month": alert.month.strftime("%Y-%m"),
        "threshold": alert.threshold,
        "spent": str(cents(alert.spent)),
        "amount": str(cents(alert.amount)),
        "currency": card.currency if card else "EUR",
        "hard_stop": alert.budget.hard_stop,
    }


def budgets_check_all(*, today: dt.date | None = None) -> int:
    """The beat's pass: every project with a budget in force this month. Alerts fired."""
    today = today or timezone.now().date()
    month = selectors.month_start(today)
    projects = set(Budget.objects.filter(month=month).values_list("project_id", flat=True)) | set(
        Budget.objects.filter(month__lt=month, recurring=True).values_list("project_id", flat=True)
    )
    fired = 0
    for project_id in sorted(projects):
        try:
            fired += len(budget_check(project_id, today=today))
        except Exception:  # noqa: BLE001 - one project must not stop the pass for others
            log.exception("budget check of project %s failed", project_id)
    return fired


def alerts_this_month(project: Project, *, today: dt.date | None = None) -> list[BudgetAlert]:
    month = selectors.month_start(today or timezone.now().date())
    return list(BudgetAlert.objects.filter(project=project, month=month).order_by("-threshold"))
