"""The demo's money walk: alice (admin of Acme AI) sets the organisation's rate card and a
small monthly budget for the demo project before any job runs, so every attempt the
demo makes is priced as it happens; at the end the storage snapshot is taken, the budget
checked, and the overview's figures (measured CPU hours, spend against the budget,
spend by kind, storage) are printed as the dashboard home shows them."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from django.utils import timezone

from controlplane.finops import overview_selectors as money
from controlplane.finops.alerts import alerts_this_month, budget_check
from controlplane.finops.models import RateCard
from controlplane.finops.rates import cents
from controlplane.finops.services import budget_set, rate_card_create
from controlplane.finops.storage import storage_snapshot

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.projects.models import Project

# Plausible list prices of a managed platform, in EUR.
DEMO_RATES = {
    "cpu_hour": "0.12",
    "gpu_hour": {"default": "2.50", "NVIDIA H100 80GB HBM3": "3.20"},
    "storage_gb_month": {
        "raw": "0.023",
        "derived": "0.023",
        "checkpoints": "0.023",
        "models": "0.023",
        "archive": "0.0125",
    },
    "tokens_million": "0.60",
}
# Small on purpose: the demo's own CPU time crosses its 80% alert on this 2-core machine.
DEMO_BUDGET = Decimal("0.05")


def rates_and_budget(command, project: Project, users: dict[str, User]) -> None:
    command.step("Rate card and budget (FinOps): every job attempt is priced as it runs")
    org = project.organisation
    card = RateCard.objects.filter(organisation=org).order_by("-version").first()
    if card is None:
        card = rate_card_create(
            org=org,
            actor=users["alice"],
            rates=DEMO_RATES,
            currency="EUR",
            reason="demo list prices",
            base_version=0,
        )
    month = timezone.now().date().replace(day=1)
    budget_set(project=project, actor=users["alice"], month=month, amount=DEMO_BUDGET)
    command.stdout.write(
        f"    rate card v{card.version} of {org.name}: {cents(card.rates['cpu_hour'])} "
        f"{card.currency} per CPU-hour, {cents(card.rates['gpu_hour']['default'])} per GPU-hour "
        f"(/orgs/{org.slug}/rate-card/); budget {DEMO_BUDGET} {card.currency} for "
        f"{month:%B %Y}, alerts at 80% and 100% (/projects/{project.pk}/budget/)"
    )


def spend_overview(command, project: Project, users: dict[str, User]) -> None:
    command.step("The overview an IT leader opens: measured usage and its cost")
    storage_snapshot(projects=[project.pk])
    fired = budget_check(project.pk)
    org = project.organisation
    now = timezone.now()
    month = now.date().replace(day=1)
    scope = money.overview_scope(users["alice"], org)
    usage = money.usage_totals(scope, month)
    costs = money.month_costs(scope, month)
    spend = {row.project_id: row for row in money.spend_by_project(scope, month, now, costs)}
    mine = spend[project.pk]
    currency = money.currency_of(org)
    used = f" ({mine.total / mine.budget:.0%} used)" if mine.budget else ""
    command.stdout.write(
        f"    {usage['attempts']} job attempts measured: {usage['cpu_hours']:.3f} CPU hours, "
        f"{usage['wall_hours']:.3f} wall hours, {usage['gpu_hours']:.3f} GPU hours"
    )
    command.stdout.write(
        f"    spent this month: {mine.total:.4f} {currency} of a {cents(mine.budget or 0)} "
        f"budget{used}; jobs {mine.jobs:.4f}, storage {mine.storage:.4f}, serving "
        f"{mine.serving:.4f}; forecast to month end {cents(mine.forecast)}"
    )
    by_kind = sorted(money.spend_by_kind(scope, month, costs), key=lambda r: -r["cost"])[:3]
    if by_kind:
        top = ", ".join(f"{r['kind']} {r['cost']:.4f}" for r in by_kind)
        command.stdout.write(f"    most spent on: {top} {currency}")
    alerts = alerts_this_month(project)
    if alerts:
        said = ", ".join(f"{a.threshold}%" for a in alerts)
        command.stdout.write(
            f"    budget alerts this month: {said} ({len(fired)} fired now; a banner on the "
            "project's pages, an audit event, a webhook delivery when one is set)"
        )
    command.stdout.write(
        f"    the dashboard home (/) shows it all for {org.name}; CSV per table; "
        f"GET /api/v1/orgs/{org.slug}/cost/ and /usage/; Prometheus figures at /metrics"
    )
