"""What a job's page shows, read and shaped for people: its timing, its parameters as a
definition list with links, its result as rows with units, a post-training run's
before/after, and its charts (train and validation curves of one metric on one chart).
Values are formatted in page_values.py, events listed by page_events.py.

Every job kind's result has its own shape (workers/jobs/*.py): nothing here assumes a
field's type from its name alone; a value of an unexpected type is shown as it is, never
a 500 (tests/platform/jobs/test_job_page_every_kind.py renders every kind in every state).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from django.urls import reverse
from django.utils import timezone

from controlplane.jobs.models import Job
from controlplane.jobs.page_values import (
    Cell,
    Row,
    flattened,
    seconds_between,
    setting_cell,
    significant,
    value_cell,
)
from controlplane.jobs.selectors import job_charts
from controlplane.projects.models import Project

# Curves of one metric logged under these prefixes share a chart ("train/loss" and
# "val/loss" on the chart "loss"): the gap between them is what a reader looks for.
SPLITS = ("train", "val", "eval")
# Result fields shown elsewhere on the page (samples, the first records, before/after),
# or too long for a table (a pipeline's report and preview: on the dataset version's page;
# an evaluation's details: on the model version's page; published files: Artifacts).
RESULT_SHOWN_ELSEWHERE = frozenset(
    {"samples", "files", "report", "preview", "details", "summary", "baseline"}
)
# Before/after: which way is better, by the metric's last name part.
HIGHER_IS_BETTER = frozenset(
    {"accuracy", "margin", "reward", "logp_accuracy", "logp_margin", "fid_accuracy"}
)
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "fid"})


# ---------------------------------------------------------------------------- timing


def job_timing(job: Job, *, now: dt.datetime | None = None) -> dict[str, float | None]:
    """Seconds a job waited in the queue and has run (so far, while it runs)."""
    now = now or timezone.now()
    ended = job.finished_at or (None if job.is_terminal else now)
    waited_until = job.started_at or (None if job.is_terminal else now)
    return {
        "queue_wait": seconds_between(job.created_at, waited_until),
        "duration": seconds_between(job.started_at, ended),
    }


# ---------------------------------------------------------------------------- results


def first_records(job: Job) -> list | None:
    """An inspect job's first records (its `records` is a list); every other kind's
    `records` is a count (data pipeline, erasure) and is one of the result's figures."""
    records = job.result.get("records") if isinstance(job.result, dict) else None
    return records if isinstance(records, list) else None


def posttrain_comparison(job: Job) -> list[dict[str, Any]]:
    """A post-training run's held-out figures before its first step and after its last,
    with the change and whether it went the better way (None: no better way, a KL)."""
    result = job.result if isinstance(job.result, dict) else {}
    before, after = result.get("baseline"), result.get("evaluation")
    if not (isinstance(before, dict) and isinstance(after, dict) and before and after):
        return []
    rows = []
    for key in sorted({*before, *after}, key=_comparison_order):
        old, new = before.get(key), after.get(key)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
        change = new - old if numbers else None
        name = key.rsplit("/", 1)[-1]
        better = None
        if change and name in HIGHER_IS_BETTER:
            better = change > 0
        elif change and name in LOWER_IS_BETTER:
            better = change < 0
        rows.append(
            {
                "metric": key,
                "before": value_cell(key, old),
                "after": value_cell(key, new),
                "change": _change_cell(key, change),
                "relative": _relative(change, old),
                "better": better,
            }
        )
    return rows


# The headline figures first: what a reward model or a policy was trained to move.
_HEADLINE = ("accuracy", "reward", "loss", "margin", "kl")


def _comparison_order(key: str) -> tuple[int, str]:
    name = key.rsplit("/", 1)[-1]
    return (_HEADLINE.index(name) if name in _HEADLINE else len(_HEADLINE), key)


def _relative(change: float | None, old: Any) -> str:
    """The change relative to the start; left out from near zero (+13400 % says nothing)."""
    if not change or not isinstance(old, int | float) or not old:
        return ""
    relative = change / abs(old) * 100
    return f"{relative:+.1f} %" if abs(relative) < 1000 else ""


def _change_cell(key: str, change: float | None) -> Cell:
    if change is None:
        return Cell("—")
    cell = value_cell(key, abs(change))
    sign = "+" if change > 0 else "−" if change < 0 else "±"
    # An accuracy's change is in percentage points, not a percentage of itself.
    unit = "pp" if cell.unit == "%" else cell.unit
    return Cell(sign + cell.text, unit, raw=change)


def result_rows(job: Job) -> list[Row]:
    """The job's result as rows of figures with units. Fields shown in a section of their
    own are left out; a post-training run's evaluation is its before/after table."""
    result = job.result if isinstance(job.result, dict) else {}
    hidden = set(RESULT_SHOWN_ELSEWHERE)
    if first_records(job) is not None:
        hidden.add("records")
    if posttrain_comparison(job):
        hidden.add("evaluation")
    if job.kind == "erasure":
        hidden.add("versions")  # the subject request's page lists them, version by version
    shown = {k: v for k, v in result.items() if k not in hidden}
    rows = flattened(shown)
    if job.kind == "erasure" and isinstance(result.get("versions"), list):
        versions = result["versions"]
        holding = sum(1 for v in versions if ((v or {}).get("found") or {}).get("records"))
        rows.append(Row("dataset versions searched", Cell(f"{len(versions)}")))
        rows.append(Row("versions holding the subject", Cell(f"{holding}")))
    return rows


def result_summary(job: Job) -> str:
    """A data pipeline's report in a few lines (the whole report: the version's page)."""
    summary = job.result.get("summary") if isinstance(job.result, dict) else None
    return summary if isinstance(summary, str) else ""


def result_json(job: Job) -> str:
    """The whole result as indented JSON: one click away under the table."""
    return json.dumps(job.result, indent=1, ensure_ascii=False, default=str)[:200_000]


# ---------------------------------------------------------------------------- parameters


@dataclass
class Param:
    """One entry of the parameters' definition list: a value, a link, or nested entries."""

    label: str
    cell: Cell | None = None
    link: str = ""
    link_text: str = ""
    children: list[Param] = field(default_factory=list)


def _dataset_version_link(project: Project, version_id: Any) -> tuple[str, str] | None:
    from controlplane.datasets.models import DatasetVersion

    if not isinstance(version_id, int) or isinstance(version_id, bool):
        return None
    version = (
        DatasetVersion.objects.filter(pk=version_id, dataset__project=project)
        .select_related("dataset")
        .first()
    )
    if version is None:
        return None
    url = reverse("dataset-version", args=[project.pk, version.dataset_id, version.number])
    return url, f"{version.dataset.slug} v{version.number}"


def _job_link(project: Project, job_id: Any) -> tuple[str, str] | None:
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        return None
    other = Job.objects.filter(pk=job_id, project=project).only("kind").first()
    if other is None:
        return None
    return reverse("job-detail", args=[project.pk, job_id]), f"job {job_id} ({other.kind})"


def _model_version_link(project: Project, version_id: Any) -> tuple[str, str] | None:
    from controlplane.registry.models import ModelVersion

    if not isinstance(version_id, int) or isinstance(version_id, bool):
        return None
    version = (
        ModelVersion.objects.filter(pk=version_id, model__project=project)
        .select_related("model")
        .first()
    )
    if version is None:
        return None
    url = reverse("registry-version", args=[project.pk, version.model.name, version.number])
    return url, f"{version.model.name} v{version.number}"


def _upload_link(project: Project, upload_id: Any) -> tuple[str, str] | None:
    from controlplane.uploads.models import Upload

    if not isinstance(upload_id, int) or isinstance(upload_id, bool):
        return None
    upload = Upload.objects.filter(pk=upload_id, project=project).first()
    if upload is None:
        return None
    # Uploads are listed on the project's page (an upload has no page of its own).
    return reverse("project-detail", args=[project.pk]), f"{upload.filename} (upload {upload_id})"


# Parameters that name another object of the project: shown as a link to its page.
LINKED_PARAMS = {
    "dataset_version_id": ("Dataset version", _dataset_version_link),
    "training_dataset_version_id": ("Trained on", _dataset_version_link),
    "base_job_id": ("Base job", _job_link),
    "reward_job_id": ("Reward model job", _job_link),
    "model_version_id": ("Model version", _model_version_link),
    "upload_id": ("Upload", _upload_link),
}


def _param(project: Project, key: str, value: Any, *, depth: int = 0) -> Param:
    if key in LINKED_PARAMS and depth == 0:
        label, linker = LINKED_PARAMS[key]
        found = linker(project, value)
        if found is not None:
            return Param(label, link=found[0], link_text=found[1])
        return Param(label, cell=Cell(f"{value} (no longer in this project)", raw=value))
    if isinstance(value, dict) and value and depth < 6:
        return Param(
            key, children=[_param(project, k, v, depth=depth + 1) for k, v in value.items()]
        )
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) and depth < 6:
        children = [
            Param(
                f"{index + 1}",
                children=[_param(project, k, v, depth=depth + 2) for k, v in item.items()],
            )
            for index, item in enumerate(value[:50])
        ]
        return Param(key, children=children)
    return Param(key, cell=setting_cell(key, value))


def param_items(job: Job, project: Project) -> list[Param]:
    """The job's parameters as the page's definition list: the objects they name as links
    (dataset version, base and reward jobs, model version, upload), nested settings as
    nested lists, in the order the API stored them."""
    params = job.params if isinstance(job.params, dict) else {}
    items = []
    if job.experiment:
        url = reverse("experiment-compare", args=[project.pk])
        from django.utils.http import urlencode

        items.append(
            Param(
                "Experiment",
                link=f"{url}?{urlencode({'experiment': job.experiment})}",
                link_text=job.experiment,
            )
        )
    for key, value in params.items():
        if key == "input_names":  # derived by the platform: the inputs' names on the worker
            continue
        items.append(_param(project, key, value))
    return items


# ---------------------------------------------------------------------------- charts


def merged_splits(charts: list[tuple[str, dict]]) -> list[tuple[str, dict[str, list]]]:
    """One job's charts ({key: {"job N": points}}) with the train/val/eval curves of one
    metric on one chart, labelled by their keys: [("loss", {"train/loss": ..., "val/loss": ...})]."""
    by_name: dict[str, list[str]] = {}
    for key, _ in charts:
        split, _, name = key.partition("/")
        if split in SPLITS and name:
            by_name.setdefault(name, []).append(key)
    shared = {name for name, keys in by_name.items() if len(keys) > 1}
    out: list[tuple[str, dict[str, list]]] = []
    placed: dict[str, dict[str, list]] = {}
    for key, lines in charts:
        points = next(iter(lines.values()), [])
        split, _, name = key.partition("/")
        if split in SPLITS and name in shared:
            if name not in placed:
                placed[name] = {}
                out.append((name, placed[name]))
            placed[name][key] = points
        else:
            out.append((key, {key: points}))
    return out


def job_page_charts(job: Job) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """The job page's charts, and the metrics that never changed as (key, value): a chart
    of a flat line says less than its one value."""
    from controlplane.dashboard.templatetags.charts import is_constant

    charts, constants = [], []
    for title, lines in merged_splits(job_charts(job)):
        if len(lines) == 1:
            ((key, points),) = lines.items()
            if is_constant(points):
                constants.append((key, significant(points[0][1])))
                continue
        charts.append((title, lines))
    return charts, constants


def job_page_charts_json(job: Job) -> dict[str, Any]:
    """What charts.js polls while the job runs: every chart's data, and whether to go on."""
    from controlplane.dashboard.templatetags.charts import chart_data

    charts, _ = job_page_charts(job)
    return {
        "charts": [chart_data(lines, title) for title, lines in charts],
        "live": not job.is_terminal,
    }


# ---------------------------------------------------------------------------- the page

# Kinds whose workers log metrics: their page keeps a place for the charts from the start.
METRIC_KINDS = frozenset(
    {"pretrain", "diffusion", "gan", "vae", "sft", "lora", "qlora", "reward", "dpo", "ppo"}
)


def text_samples(job: Job) -> list[dict]:
    """Generated text a run published with its result ([{"prompt", "text"}])."""
    samples = job.result.get("samples") if isinstance(job.result, dict) else None
    if not isinstance(samples, list):
        return []
    return [s for s in samples if isinstance(s, dict) and ("prompt" in s or "text" in s)]


def produced_versions(job: Job) -> list:
    """Dataset versions the job derived (a data pipeline's cleaned, tokenized version)."""
    return list(job.produced_versions.select_related("dataset").order_by("id"))
