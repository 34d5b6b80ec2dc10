"""Evaluations of model versions: the row an `evaluate` job fills, and comparing them.

An evaluation is an `evaluate` job (controlplane/jobs/evaluate.py, workers/jobs/evaluate.py,
engine/evaluate/). Its ModelEvaluation row is created with the job, in the job's
transaction (`evaluation_start`, the jobs app's create hook), so a version's page lists
its evaluation as soon as it is queued; when the job succeeds, the control worker applies
its result (`evaluation_record`, the jobs app's success hook, in the transaction that
marks the job succeeded) and the version is audited as `model_version.evaluated`.

Metrics are flat {name: number}: val_loss, perplexity, toxicity_share, toxicity_mean,
pii_share, pii_found, pii_<type>, repetition, memorisation_share, memorisation_spans,
samples (text models); recognition, recognition_<digit>, frechet, samples (image models).
Promotion thresholds name these keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.utils import timezone

from controlplane.registry.models import ModelEvaluation, ModelVersion

# Which way is better, per metric (a key not listed: no direction, e.g. counts).
LOWER_IS_BETTER = (
    "val_loss",
    "perplexity",
    "toxicity_share",
    "toxicity_mean",
    "pii_share",
    "pii_found",
    "repetition",
    "memorisation_share",
    "frechet",
)
HIGHER_IS_BETTER = ("recognition",)
# The order of a comparison table: the headline figures first, then the rest by name.
HEADLINE = (
    "val_loss",
    "perplexity",
    "toxicity_share",
    "memorisation_share",
    "pii_share",
    "repetition",
    "recognition",
    "frechet",
)


def metric_direction(key: str) -> str | None:
    """ "lower" or "higher" (is better), or None when neither is."""
    if key in LOWER_IS_BETTER or key.startswith("pii_") and key != "pii_share":
        return "lower"
    if key in HIGHER_IS_BETTER or key.startswith("recognition_"):
        return "higher"
    return None


def evaluation_start(job) -> ModelEvaluation:
    """The evaluation row of a new `evaluate` job (in the job's transaction)."""
    version = ModelVersion.objects.get(pk=job.params["model_version_id"])
    return ModelEvaluation.objects.create(version=version, job=job)


def _flat_metrics(raw: Any) -> dict[str, float]:
    """Only finite numbers under string keys: what thresholds and charts can read."""
    if not isinstance(raw, dict):
        return {}
    return {
        str(key): float(value)
        for key, value in raw.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }


def evaluation_record(job, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Fill the job's evaluation from its result; the audit events to append (the caller
    appends them last, after every row it changes: the audit chain is locked last)."""
    evaluation = (
        ModelEvaluation.objects.select_for_update()
        .select_related("version")
        .filter(job=job)
        .first()
    )
    if evaluation is None:  # a job queued before evaluations were recorded with the job
        evaluation = evaluation_start(job)
    evaluation.metrics = _flat_metrics(result.get("metrics"))
    details = result.get("details")
    evaluation.details = details if isinstance(details, dict) else {}
    evaluation.finished_at = timezone.now()
    evaluation.save(update_fields=["metrics", "details", "finished_at"])
    return [
        {
            "action": "model_version.evaluated",
            "artifact": evaluation.version,
            "payload": {
                "job_id": job.pk,
                "evaluation_id": evaluation.pk,
                "metrics": evaluation.metrics,
            },
        }
    ]


def compare(evaluations: Sequence[ModelEvaluation]) -> list[dict[str, Any]]:
    """Rows of a side-by-side table of the evaluations' figures (usually two versions'):
    `compare_metrics` of their metrics."""
    return compare_metrics([evaluation.metrics for evaluation in evaluations])


def compare_metrics(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a side-by-side table of several evaluations' metrics (usually two):

        [{"metric": "val_loss", "values": [1.71, 1.64], "delta": -0.07,
          "direction": "lower", "better": True}, ...]

    ``values`` in the order given (None where an evaluation lacks the figure, or it is not
    a finite number); ``delta`` is the last minus the first (None unless both have it);
    ``better``: whether the last improves on the first (None when equal, or the metric
    has no direction). The headline figures come first, then the rest by name.
    """
    flat = [_flat_metrics(m) for m in metrics]
    keys: set[str] = set()
    for figures in flat:
        keys.update(figures)
    ordered = [k for k in HEADLINE if k in keys] + sorted(keys - set(HEADLINE))
    rows = []
    for key in ordered:
        values = [figures.get(key) for figures in flat]
        first, last = (values[0], values[-1]) if values else (None, None)
        delta = last - first if first is not None and last is not None else None
        direction = metric_direction(key)
        better = None
        if delta and direction is not None:
            better = delta < 0 if direction == "lower" else delta > 0
        rows.append(
            {
                "metric": key,
                "values": values,
                "delta": delta,
                "direction": direction,
                "better": better,
            }
        )
    return rows
