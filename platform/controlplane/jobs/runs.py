"""Run summaries for the jobs list and the experiments table: each run's final metric values,
duration and key parameters, as columns a page can sort by.

Everything here costs a fixed number of queries whatever the number of runs: a final value
is one correlated subquery per (run, metric) that walks the (job, key, step) unique index
backwards and stops at the first row, so a run that logged a million points costs what one
with ten does, and no page loops over runs issuing queries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Exists, OuterRef, QuerySet, Subquery
from django.utils import timezone

from controlplane.jobs.models import Job, JobMetric
from controlplane.projects.models import Project

# The metrics a run table may show, in column order: the losses first, then what each
# kind's engine reports as its headline (workers/jobs/*: images, finetune, evaluate).
SUMMARY_METRICS = (
    "train/loss",
    "val/loss",
    "val/perplexity",
    "eval/loss",
    "eval/accuracy",
    "reward/accuracy",
    "dpo/accuracy",
    "dpo/margin",
    "ppo/reward",
    "eval/frechet_distance",
    "train/elbo",
    "train/d_loss",
    "train/g_loss",
)
# The jobs list shows one loss: the last training loss, with the held-out one beside it.
LIST_METRICS = ("train/loss", "val/loss")

# Parameters every run table shows (when a run has them), whatever differs: the same
# setting is spelled per engine (pretrain's optim.lr, post-training's train.lr).
ALWAYS_PARAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("steps", ("train.max_iters", "train.steps")),
    ("lr", ("optim.lr", "train.lr")),
    ("batch", ("train.batch_size",)),
    ("model", ("preset",)),
)
# Derived or bulky parameters: no use as a column (the job page lists them all).
_HIDDEN_PARAMS = {"input_names", "subject_field", "pipeline", "sample_prompts", "prompts"}
MAX_VARYING_PARAMS = 8  # beyond this many columns the table stops being readable


def _final_value(key: str) -> Subquery:
    return Subquery(
        JobMetric.objects.filter(job=OuterRef("pk"), key=key).order_by("-step").values("value")[:1]
    )


def with_final_metrics(jobs: QuerySet[Job], keys: Sequence[str]) -> QuerySet[Job]:
    """`jobs` annotated with `final_0`, `final_1`, ...: the last value of each of `keys`."""
    return jobs.annotate(**{f"final_{n}": _final_value(key) for n, key in enumerate(keys)})


def final_metrics(job: Job, keys: Sequence[str]) -> dict[str, float | None]:
    """{key: last value} of a job read through `with_final_metrics(..., keys)`."""
    return {key: getattr(job, f"final_{n}", None) for n, key in enumerate(keys)}


def job_rows_for(
    project: Project,
    *,
    state: str | None = None,
    kind: str | None = None,
    experiment: str | None = None,
) -> QuerySet[Job]:
    """The jobs list: newest first, each with its final train and validation loss."""
    from controlplane.jobs.selectors import jobs_for

    jobs = jobs_for(project, state=state, kind=kind, experiment=experiment)
    return with_final_metrics(jobs, LIST_METRICS)


def runs_with_metrics(project: Project, *, experiment: str = "", limit: int = 50) -> list[Job]:
    """The newest runs that logged metrics (those of `experiment` if named), each with its
    final value of every SUMMARY_METRICS key: what the experiments table lists."""
    logged = JobMetric.objects.filter(job=OuterRef("pk"))
    runs = Job.objects.filter(Exists(logged), project=project)
    if experiment:
        runs = runs.filter(experiment=experiment)
    runs = with_final_metrics(runs.select_related("created_by"), SUMMARY_METRICS)
    return list(runs.order_by("-id")[:limit])


def duration_of(job: Job, *, now: dt.datetime | None = None) -> dt.timedelta | None:
    """How long the job ran (so far, while it runs); None before it starts."""
    if job.started_at is None:
        return None
    end = job.finished_at or now or timezone.now()
    return max(end - job.started_at, dt.timedelta(0))


def flat_params(params: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.lr": 0.001, ...}: nested parameters under dotted names (as the API's field
    errors name them), lists joined; derived and bulky ones left out."""
    flat: dict[str, Any] = {}
    if not isinstance(params, dict):
        return flat
    for name, value in params.items():
        if name in _HIDDEN_PARAMS:
            continue
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{prefix}{name}."))
        elif isinstance(value, list):
            flat[f"{prefix}{name}"] = ", ".join(map(str, value))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


@dataclass(frozen=True)
class Column:
    """A sortable column: `sort` is its ?sort= value ("m:train/loss", "p:lr", "duration")."""

    sort: str
    label: str
    numeric: bool = False


@dataclass
class RunRow:
    job: Job
    duration: dt.timedelta | None
    metrics: list[float | None] = field(default_factory=list)  # in metric_columns' order
    params: list[Any] = field(default_factory=list)  # in param_columns' order
    param_cells: list[tuple[Column, Any]] = field(default_factory=list)  # (column, value)

    def value(self, sort: str, metric_index: dict[str, int], param_index: dict[str, int]):
        if sort in metric_index:
            return self.metrics[metric_index[sort]]
        if sort in param_index:
            return self.params[param_index[sort]]
        if sort == "duration":
            return self.duration.total_seconds() if self.duration is not None else None
        return {"run": self.job.pk, "kind": self.job.kind, "state": self.job.state}.get(sort)


@dataclass
class RunTable:
    metric_columns: list[Column]
    param_columns: list[Column]
    rows: list[RunRow]
    sort: str
    descending: bool

    @property
    def fixed_columns(self) -> list[Column]:
        return [Column("run", "Run", True), Column("kind", "Kind"), Column("state", "State")]

    @property
    def columns(self) -> list[Column]:
        return [
            *self.fixed_columns,
            Column("duration", "Duration", True),
            *self.metric_columns,
            *self.param_columns,
        ]


def _always_param(flat: dict[str, Any], names: Iterable[str]) -> Any:
    return next((flat[name] for name in names if flat.get(name) is not None), None)


def _param_columns(flats: list[dict[str, Any]]) -> list[tuple[Column, tuple[str, ...]]]:
    """The always-useful parameters some run has, then those whose value differs between
    the runs (alphabetical, at most MAX_VARYING_PARAMS)."""
    columns = [
        (Column(f"p:{label}", label, numeric=label != "model"), names)
        for label, names in ALWAYS_PARAMS
        if any(_always_param(flat, names) is not None for flat in flats)
    ]
    covered = {name for _, names in ALWAYS_PARAMS for name in names}
    candidates = sorted({name for flat in flats for name in flat} - covered)
    varying = [name for name in candidates if len({repr(flat.get(name)) for flat in flats}) > 1][
        :MAX_VARYING_PARAMS
    ]
    for name in varying:
        numeric = all(
            isinstance(flat.get(name), int | float) and not isinstance(flat.get(name), bool)
            for flat in flats
            if flat.get(name) is not None
        )
        columns.append((Column(f"p:{name}", name, numeric=numeric), (name,)))
    return columns


def run_table(runs: list[Job], *, sort: str = "", descending: bool | None = None) -> RunTable:
    """The experiments table of `runs` (read by `runs_with_metrics`), sorted by `sort` (a
    column's sort value; unknown: newest run first). Runs without a value sort last either
    way, so "best val loss first" never starts with the runs that have none."""
    now = timezone.now()
    finals = [final_metrics(job, SUMMARY_METRICS) for job in runs]
    metric_keys = [key for key in SUMMARY_METRICS if any(f[key] is not None for f in finals)]
    flats = [flat_params(job.params) for job in runs]
    params = _param_columns(flats)
    rows = [
        RunRow(
            job=job,
            duration=duration_of(job, now=now),
            metrics=[final[key] for key in metric_keys],
            params=[_always_param(flat, names) for _, names in params],
        )
        for job, final, flat in zip(runs, finals, flats, strict=True)
    ]
    for row in rows:
        row.param_cells = list(zip((column for column, _ in params), row.params, strict=True))
    table = RunTable(
        metric_columns=[Column(f"m:{key}", key, numeric=True) for key in metric_keys],
        param_columns=[column for column, _ in params],
        rows=rows,
        sort="run",
        descending=True,
    )
    if sort in {column.sort for column in table.columns}:
        # Losses read best-first ascending; anything else (a newer run, a longer one)
        # reads best-first descending. A second click on the header flips it.
        table.sort = sort
        table.descending = (not sort.startswith("m:")) if descending is None else descending
    _sort_rows(table)
    return table


def _sort_rows(table: RunTable) -> None:
    metric_index = {c.sort: n for n, c in enumerate(table.metric_columns)}
    param_index = {c.sort: n for n, c in enumerate(table.param_columns)}

    def value(row: RunRow):
        return row.value(table.sort, metric_index, param_index)

    present = [row for row in table.rows if value(row) is not None]
    missing = [row for row in table.rows if value(row) is None]
    # Mixed types in one parameter column (a number here, a preset name there) sort
    # numbers first rather than raising.
    present.sort(
        key=lambda row: (
            (0, float(value(row)), "")
            if isinstance(value(row), int | float)
            else (1, 0.0, str(value(row)))
        ),
        reverse=table.descending,
    )
    table.rows = present + missing
