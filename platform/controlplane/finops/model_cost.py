"""What a model cost: the priced usage of every job in its lineage.

A version's lineage is the set of jobs the registry recorded when it registered the
version (``ModelVersion.lineage_jobs``, walked by ``registry.lineage.lineage_of``): the
job that produced it, the pipeline runs that produced its training data, and for a
fine-tune the base model's own lineage. We read that recorded set rather than walk the
lineage again, so the cost follows exactly the lineage the page and the model card show.
Each job counts once, however many paths lead to it; a model's cost is over the union of
its versions' jobs (a shared base is paid once).

Two queries whatever the number of versions: the lineage links, then one GROUP BY over
the usage rows of those jobs.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from controlplane.finops.models import JobAttemptUsage
from controlplane.finops.rates import cents

ZERO = Decimal(0)


def _lineage_job_ids(versions: list[Any]) -> dict[int, set[int]]:
    """{version id: ids of the jobs of its lineage, its source job included}."""
    from controlplane.registry.models import ModelVersion

    jobs: dict[int, set[int]] = {version.pk: {version.source_job_id} for version in versions}
    links = ModelVersion.lineage_jobs.through.objects.filter(
        modelversion_id__in=list(jobs)
    ).values_list("modelversion_id", "job_id")
    for version_id, job_id in links:
        jobs[version_id].add(job_id)
    return jobs


def _job_costs(job_ids: set[int]) -> dict[int, dict[str, Any]]:
    """{job id: {"kind", "amount", "currencies"}} for the jobs that reported usage."""
    rows = (
        JobAttemptUsage.objects.filter(job_id__in=job_ids)
        .values("job_id", "kind", "rate_card__currency")
        .annotate(amount=Sum("cost"))
    )
    costs: dict[int, dict[str, Any]] = {}
    for row in rows:
        cost = costs.setdefault(
            row["job_id"], {"kind": row["kind"], "amount": ZERO, "currencies": set()}
        )
        cost["amount"] += row["amount"] or ZERO
        if row["rate_card__currency"]:
            cost["currencies"].add(row["rate_card__currency"])
    return costs


def _summary(job_ids: set[int], costs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"amount": ZERO, "job_ids": []})
    currencies: set[str] = set()
    total = ZERO
    for job_id in sorted(job_ids):
        cost = costs.get(job_id)
        if cost is None:
            continue  # a job that never reported usage (or ran before accounting)
        entry = by_kind[cost["kind"]]
        entry["amount"] += cost["amount"]
        entry["job_ids"].append(job_id)
        currencies |= cost["currencies"]
        total += cost["amount"]
    return {
        # None when no rate card priced it, or the organisation changed currency meanwhile.
        "currency": next(iter(currencies)) if len(currencies) == 1 else None,
        "total": cents(total),
        "jobs": len(job_ids),
        "by_kind": [
            {"kind": kind, "amount": cents(entry["amount"]), "job_ids": entry["job_ids"]}
            for kind, entry in sorted(by_kind.items(), key=lambda item: -item[1]["amount"])
        ],
    }


def model_version_costs(versions: list[Any]) -> dict[int, dict[str, Any]]:
    """{version id: its cost} for several versions at once (a list page, the API)."""
    lineages = _lineage_job_ids(versions)
    costs = _job_costs(set().union(*lineages.values()) if lineages else set())
    return {version_id: _summary(ids, costs) for version_id, ids in lineages.items()}


def model_version_cost(version: Any) -> dict[str, Any]:
    """The cost of one version's lineage: ``{currency, total, jobs, by_kind}``."""
    return model_version_costs([version])[version.pk]


def model_cost(versions: list[Any]) -> dict[str, Any]:
    """The cost of a model: every job behind any of the given versions, each once."""
    lineages = _lineage_job_ids(versions)
    job_ids = set().union(*lineages.values()) if lineages else set()
    return _summary(job_ids, _job_costs(job_ids))


def cost_as_json(cost: dict[str, Any]) -> dict[str, Any]:
    """A cost as the API writes it: amounts as strings, like every amount of the API."""
    return {
        **cost,
        "total": str(cost["total"]),
        "by_kind": [{**entry, "amount": str(entry["amount"])} for entry in cost["by_kind"]],
    }
