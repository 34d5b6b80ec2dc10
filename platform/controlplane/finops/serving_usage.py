"""Serving usage per deployment and hour, from the serve nodes' reports.

Each replica process counts requests and tokens in and out over its life and reports
them in its health (workers/serve/replica.py), which the node sends with every sync. The
platform keeps the last reported figures on the Replica row; the difference with the
new ones is what the replica served since, added to the hour of the report. A replica
process that restarted (its `restarts` went up, or a counter went down) starts again at
zero, so its new figures are all new usage. This works whether or not the deployment
archives its requests (InferenceRecord holds tokens only for archived requests, so it is
not counted here: it would count them twice).

Requests served after a replica's last health check and before it died are not
counted: the same bound as the node's report interval (seconds).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Q, Sum

from controlplane.finops.models import ServingUsage
from controlplane.finops.rates import cents, rate_card_in_force, serving_cost
from controlplane.finops.selectors import month_bounds

COUNTERS = ("requests", "tokens_in", "tokens_out")


def _counter(health: Any, name: str) -> int:
    value = health.get(name) if isinstance(health, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def counters_delta(before: Any, after: Any, *, restarted: bool) -> dict[str, int]:
    """What a replica served between two reports of its cumulative counters."""
    new = {name: _counter(after, name) for name in COUNTERS}
    if restarted:
        return new
    old = {name: _counter(before, name) for name in COUNTERS}
    if any(new[name] < old[name] for name in COUNTERS):
        return new  # the process started again: its counters did too
    return {name: new[name] - old[name] for name in COUNTERS}


@dataclass
class UsageBatch:
    """Deltas of one sync, summed per deployment, written in one statement each."""

    hour: dt.datetime
    totals: dict[int, dict[str, int]] = field(default_factory=dict)  # by deployment id

    def add(self, *, deployment_id: int, delta: dict[str, int]) -> None:
        if not any(delta.values()):
            return
        total = self.totals.setdefault(deployment_id, dict.fromkeys(COUNTERS, 0))
        for name in COUNTERS:
            total[name] += delta[name]


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def usage_batch(now: dt.datetime) -> UsageBatch:
    return UsageBatch(hour=hour_of(now))


def usage_write(batch: UsageBatch, *, now: dt.datetime) -> None:
    """Add the batch to its hour's rows (an upsert that adds, so concurrent syncs of
    nodes serving the same deployment both count). Cost at the rate card in force now."""
    if not batch.totals:
        return
    from controlplane.serving.models import Deployment

    owners = {
        pk: (project_id, org_id)
        for pk, project_id, org_id in Deployment.objects.filter(pk__in=batch.totals).values_list(
            "pk", "project_id", "project__organisation_id"
        )
    }
    cards = {org: rate_card_in_force(org, now) for _, org in owners.values()}
    table = ServingUsage._meta.db_table
    sql = (
        f"INSERT INTO {table} (deployment_id, project_id, hour, requests, tokens_in, "
        "tokens_out, rate_card_id, cost) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (deployment_id, hour) DO UPDATE SET "
        f"requests = {table}.requests + EXCLUDED.requests, "
        f"tokens_in = {table}.tokens_in + EXCLUDED.tokens_in, "
        f"tokens_out = {table}.tokens_out + EXCLUDED.tokens_out, "
        f"cost = {table}.cost + EXCLUDED.cost, "
        f"rate_card_id = COALESCE(EXCLUDED.rate_card_id, {table}.rate_card_id)"
    )
    with connection.cursor() as cursor:
        # Sorted: two syncs touching the same rows take their locks in one order.
        for deployment_id, total in sorted(batch.totals.items()):
            if deployment_id not in owners:
                continue  # deleted meanwhile: its usage rows went with it
            project_id, org_id = owners[deployment_id]
            card = cards[org_id]
            cost = (
                serving_cost(card.rates, total["tokens_in"], total["tokens_out"])
                if card
                else Decimal(0)
            )
            cursor.execute(
                sql,
                [
                    deployment_id,
                    project_id,
                    batch.hour,
                    total["requests"],
                    total["tokens_in"],
                    total["tokens_out"],
                    card.pk if card else None,
                    cost,
                ],
            )
    from controlplane.finops.alerts import budget_check_soon

    for project_id in sorted({project_id for project_id, _ in owners.values()}):
        budget_check_soon(project_id)


def deployment_serving_totals(deployment: Any, now: dt.datetime) -> dict[str, dict[str, Any]]:
    """What the deployment served and cost in the last 24 hours and this month (UTC), in
    one query over its hourly rows. The current hour counts whole: rows are per hour."""
    periods = {
        "last_24h": Q(hour__gt=hour_of(now) - dt.timedelta(hours=24)),
        "month": Q(hour__gte=month_bounds(now.date())[0]),
    }
    sums = {
        f"{period}__{name}": Sum(name, filter=condition)
        for period, condition in periods.items()
        for name in (*COUNTERS, "cost")
    }
    since = min(hour_of(now) - dt.timedelta(hours=23), month_bounds(now.date())[0])
    figures = ServingUsage.objects.filter(deployment=deployment, hour__gte=since).aggregate(**sums)
    currency = (
        ServingUsage.objects.filter(deployment=deployment, rate_card__isnull=False)
        .order_by("-hour")
        .values_list("rate_card__currency", flat=True)
        .first()
    )
    totals: dict[str, dict[str, Any]] = {}
    for period in periods:
        row: dict[str, Any] = {name: figures[f"{period}__{name}"] or 0 for name in COUNTERS}
        row["cost"] = cents(figures[f"{period}__cost"] or Decimal(0))
        row["currency"] = currency
        totals[period] = row
    return totals
