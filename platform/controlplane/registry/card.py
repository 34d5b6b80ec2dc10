"""A version's model card: the document a compliance officer signs off, as Markdown.

    model_card_markdown(version) -> str      # the card (page, card.md, MODEL_CARD.md)
    render_markdown(text) -> str             # safe HTML for the page (no raw HTML passes)

Everything on it is read from the registry at the time it is asked for: intended use and
known limits as people wrote them, architecture and training settings as registered, the
training data with each dataset version's license, source and the data pipeline's report
(records each filter dropped, PII redactions, toxicity, duplicates), the latest finished
evaluation, the lineage of jobs, and the version's audit events. Text people typed is
Markdown; rendering never lets HTML through (markdown-it with `html` off), so a
`<script>` in an intended use is shown as text, not run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from django.db.models import Q
from django.utils import timezone
from markdown_it import MarkdownIt

from controlplane.audit.models import AuditEvent
from controlplane.audit.selectors import actor_names
from controlplane.datasets.models import DatasetVersion
from controlplane.registry.models import ModelEvaluation, ModelTask, ModelVersion
from controlplane.registry.selectors import latest_evaluation
from controlplane.sizes import human_size

# Stages of the data pipeline in the order they run (the stored report is JSONB, whose
# keys come back sorted), and grouped the way the card sums them up.
STAGE_ORDER = (
    "normalize",
    "quality",
    "repetition",
    "pii",
    "toxicity",
    "exact_dedup",
    "near_dedup",
    "pipeline",
)
DUPLICATE_STAGES = ("exact_dedup", "near_dedup")
FILTER_STAGES = ("quality", "repetition", "pipeline")
# Params that are bookkeeping for the worker, not settings a reader compares.
HIDDEN_PARAMS = {"input_names"}
MAX_AUDIT_EVENTS = 200
CARD_CACHE_SECONDS = 600
INTENDED_USE_PROMPT = (
    "_Not stated yet. Someone who can run jobs in this project should say what this model "
    "is for and what it must not be used for (edit it on the version's page)._"
)
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str) -> str:
    """HTML for a card or a user's text: raw HTML in it is escaped, never passed through."""
    return _markdown.render(text)


def render_card(text: str) -> str:
    """`render_markdown` of a card, shared through the cache by the card's digest: a card
    changes when its version, evaluations or events do, and viewers of an unchanged card
    need not parse it again. A cache that is down costs the render, never the page."""
    from django.core.cache import cache

    key = "model-card-html:" + hashlib.sha256(text.encode()).hexdigest()
    try:
        html = cache.get(key)
    except Exception:  # noqa: BLE001 - fail open: render it
        html = None
    if html is None:
        html = render_markdown(text)
        try:
            cache.set(key, html, CARD_CACHE_SECONDS)
        except Exception:  # noqa: BLE001
            pass
    return html


def cell(value: Any) -> str:
    """A value as one Markdown table cell: one line, pipes escaped."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|") or "—"


def inline(text: str) -> str:
    """A name or a short value inside running text: one line, Markdown's specials escaped."""
    line = " ".join(str(text).split())
    for char in "\\`*_[]<>#|":
        line = line.replace(char, "\\" + char)
    return line


def _table(header: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def flat_settings(params: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """{"train": {"lr": 3e-4}} -> [("train.lr", 3e-4)]: every setting on one dotted line."""
    rows: list[tuple[str, Any]] = []
    for key in sorted(params):
        if not prefix and key in HIDDEN_PARAMS:
            continue
        value = params[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += flat_settings(value, name + ".")
        else:
            rows.append((name, value))
    return rows


def version_audit_events(version: ModelVersion, limit: int = MAX_AUDIT_EVENTS) -> list[AuditEvent]:
    """The version's own events (registering, registered, updated, integrity...), and the
    events of its model's aliases and promotion requests that name it, oldest first."""
    model = version.model
    names_it = (
        Q(payload__version=version.number)
        | Q(payload__previous_version=version.number)
        | Q(payload__from_version=version.number)
    )
    events = AuditEvent.objects.filter(project_id=model.project_id).filter(
        Q(artifact_type="modelversion", artifact_id=str(version.pk))
        | (
            Q(artifact_type__in=("modelalias", "promotionrequest"), payload__model=model.name)
            & names_it
        )
    )
    return list(events.order_by("-seq")[:limit])[::-1]


def _training_data(versions: list[DatasetVersion], task: str) -> list[str]:
    if not versions:
        built_in = (
            "scikit-learn's 8x8 digits"
            if task == ModelTask.IMAGE_GENERATION
            else "the bundled Shakespeare pairs"
        )
        return [
            "No dataset version is recorded for this model: it was trained on data built "
            f"into the engine ({built_in})."
        ]
    lines: list[str] = []
    for dv in versions:
        dataset = dv.dataset
        lines += [f"### {inline(dataset.name)} v{dv.number}", ""]
        facts = [
            ("Dataset", f"{dataset.name} ({dataset.slug}), version {dv.number}"),
            ("Kind", dataset.kind),
            ("License", dataset.license or "not recorded"),
            ("Source", dataset.source or "not recorded"),
            ("Origin", f"derived by job {dv.produced_by_id}" if dv.produced_by_id else "uploaded"),
            ("Size", f"{human_size(dv.byte_count)} ({dv.byte_count:,} bytes)"),
            ("Records", _number(dv.record_count) if dv.record_count is not None else "—"),
        ]
        lines += _table(("", ""), facts) + [""]
        if dv.report:
            lines += pipeline_report_lines(dv.report) + [""]
    return lines


def records(count: int) -> str:
    return f"{count:,} record" + ("" if count == 1 else "s")


def pipeline_report_lines(report: dict) -> list[str]:
    """The data pipeline report's figures: what each filter dropped, PII, toxicity, dups."""
    stages = report.get("stages", {})
    read, written = report.get("records_read", 0), report.get("records_written", 0)
    lines = [
        f"Data pipeline: {read:,} records read, {written:,} kept "
        f"({read - written:,} removed)."
        + (
            f" {report['input_problems']['count']:,} unreadable records skipped."
            if report.get("input_problems", {}).get("count")
            else ""
        ),
        "",
    ]
    rows = []
    ordered = sorted(stages, key=lambda n: (STAGE_ORDER.index(n) if n in STAGE_ORDER else 99, n))
    for name in ordered:
        stats = stages[name]
        reasons = ", ".join(f"{r} {n:,}" for r, n in stats.get("removed", {}).items())
        counts = ", ".join(f"{k} {n:,}" for k, n in stats.get("counts", {}).items())
        rows.append(
            (name, f"{stats.get('removed_total', 0):,}", reasons, stats.get("changed", 0), counts)
        )
    if rows:
        lines += _table(("Stage", "Records removed", "Why", "Records changed", "Found"), rows)
        lines.append("")
    filtered = sum(stages.get(s, {}).get("removed_total", 0) for s in FILTER_STAGES)
    pii = stages.get("pii", {})
    toxicity = stages.get("toxicity", {})
    duplicates = sum(stages.get(s, {}).get("removed_total", 0) for s in DUPLICATE_STAGES)
    summary = [f"- Quality filters dropped {records(filtered)}."]
    if "pii" in stages:
        found = ", ".join(f"{k} {n:,}" for k, n in pii.get("counts", {}).items()) or "none found"
        summary.append(
            f"- PII redactions: {sum(pii.get('counts', {}).values()):,} spans replaced in "
            f"{records(pii.get('changed', 0))} ({found})."
        )
    else:
        summary.append("- PII: the pipeline ran no PII redaction stage.")
    if "toxicity" in stages:
        summary.append(
            f"- Toxicity: {records(toxicity.get('removed_total', 0))} above the threshold removed."
        )
    else:
        summary.append("- Toxicity: the pipeline ran no toxicity filter.")
    if any(s in stages for s in DUPLICATE_STAGES):
        parts = ", ".join(
            f"{s.replace('_', ' ')} {stages[s].get('removed_total', 0):,}"
            for s in DUPLICATE_STAGES
            if s in stages
        )
        summary.append(f"- Duplicates: {records(duplicates)} removed ({parts}).")
    else:
        summary.append("- Duplicates: the pipeline ran no deduplication.")
    return lines + summary


def automatic_limits(
    version: ModelVersion, datasets: list[DatasetVersion], evaluation: ModelEvaluation | None
) -> list[str]:
    """Limits the registry can state from what it knows, whatever people wrote."""
    limits = []
    if datasets:
        # The lineage holds a derived version and the version it was made from: count
        # the text a model saw once, at the last version of each chain (a pipeline's
        # report says how much text went in; an uploaded version is its own size).
        parents = {p.pk for dv in datasets for p in dv.parents.all()}
        read_bytes = sum(
            (dv.report or {}).get("input", {}).get("bytes") or dv.byte_count
            for dv in datasets
            if dv.pk not in parents
        )
        names = ", ".join(sorted({dv.dataset.name for dv in datasets}))
        limits.append(
            f"Trained on about {read_bytes:,} characters of text from {inline(names)}: "
            "it knows nothing outside them and reproduces their style, period and biases."
        )
        unlicensed = sorted({dv.dataset.name for dv in datasets if not dv.dataset.license})
        if unlicensed:
            limits.append(
                f"The license of {inline(', '.join(unlicensed))} is not recorded: check it "
                "before any use outside this project."
            )
    block = version.architecture.get("block_size") or version.architecture.get("n_positions")
    if block:
        limits.append(f"Sees at most {block:,} tokens at a time (its context window).")
    if version.parameter_count:
        limits.append(
            f"{version.parameter_count:,} parameters: a research-scale model, not a "
            "general-purpose assistant."
        )
    if evaluation is None:
        limits.append("Not evaluated yet: its quality, toxicity and memorisation are unknown.")
    else:
        figures = evaluation.metrics
        if figures.get("toxicity_share"):
            limits.append(
                f"{figures['toxicity_share']:.1%} of its evaluation samples were scored toxic."
            )
        if figures.get("memorisation_share"):
            limits.append(
                f"{figures['memorisation_share']:.1%} of sampled 50-character spans appear "
                "verbatim in its training text."
            )
    return limits


def _lineage_lines(version: ModelVersion, jobs: list, datasets: list[DatasetVersion]) -> list[str]:
    lines = []
    for job in jobs:
        role = "source job" if job.pk == version.source_job_id else "job"
        reads = []
        if job.params.get("base_job_id"):
            reads.append(f"starts from job {job.params['base_job_id']}")
        if job.params.get("reward_job_id"):
            reads.append(f"reward model of job {job.params['reward_job_id']}")
        if job.params.get("dataset_version_id"):
            reads.append(f"reads dataset version id {job.params['dataset_version_id']}")
        lines.append(
            f"- {role} {job.pk} ({job.kind}, {job.state})"
            + (f": {', '.join(reads)}" if reads else "")
        )
    if version.base_version_id:
        base = version.base_version
        lines.append(f"- base model version: {inline(base.model.name)} v{base.number}")
    for dv in datasets:
        parents = ", ".join(f"v{p.number}" for p in dv.parents.all())
        lines.append(
            f"- dataset {inline(dv.dataset.name)} v{dv.number}"
            + (f" (derived from {parents} by job {dv.produced_by_id})" if dv.produced_by_id else "")
        )
    return lines or ["- no lineage recorded"]


def _audit_lines(events: list[AuditEvent]) -> list[str]:
    if not events:
        return ["No audit events yet."]
    names = actor_names(events)
    rows = [
        (
            f"#{event.seq}",
            event.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            names.get(event.actor_id, f"user {event.actor_id}") if event.actor_id else "system",
            event.action,
            json.dumps(event.payload, ensure_ascii=False, sort_keys=True)[:300],
        )
        for event in events
    ]
    return _table(("Seq", "When", "Who", "Action", "Details"), rows)


def model_card_markdown(
    version: ModelVersion,
    *,
    events: list[AuditEvent] | None = None,
    evaluation: ModelEvaluation | None = None,
) -> str:
    """The card of `version` as Markdown (see the module's docstring for what it holds).

    A page that has read the version's audit events or latest evaluation already passes
    them in, so they are not read twice.
    """
    if "files" not in getattr(version, "_prefetched_objects_cache", {}):
        # Not read by selectors.version_in (which the pages and API use): read it so.
        version = (
            ModelVersion.objects.select_related("model", "created_by", "source_job", "base_version")
            .prefetch_related("files")
            .get(pk=version.pk)
        )
    model = version.model
    datasets = list(
        version.dataset_versions.select_related("dataset")
        .prefetch_related("parents")
        .order_by("dataset__name", "number")
    )
    jobs = list(version.lineage_jobs.order_by("id")) or [version.source_job]
    evaluation = evaluation or latest_evaluation(version)
    aliases = ", ".join(f"@{a.name}" for a in version.aliases.all()) or "none"
    lines = [
        f"# Model card: {inline(model.name)} v{version.number}",
        "",
        *([inline(model.description), ""] if model.description else []),
        *_table(
            ("", ""),
            [
                ("Task", model.task),
                ("State", version.state),
                (
                    "Source job",
                    f"job {version.source_job_id} ({version.source_job.kind}), "
                    f"attempt {version.source_attempt}",
                ),
                (
                    "Registered",
                    f"{version.created_at:%Y-%m-%d %H:%M UTC} by {version.created_by.username}",
                ),
                ("Aliases", aliases),
            ]
            + ([("Description", version.description)] if version.description else []),
        ),
        "",
        "## Intended use",
        "",
        version.intended_use.strip() or INTENDED_USE_PROMPT,
        "",
        "## Architecture",
        "",
    ]
    if version.parameter_count:
        lines.append(f"{version.parameter_count:,} parameters.")
        lines.append("")
    if version.architecture:
        lines += _table(("Setting", "Value"), flat_settings(version.architecture)) + [""]
    elif not version.parameter_count:
        lines += ["Not recorded (the version's files are still being verified).", ""]
    files = list(version.files.all())
    if files:
        lines += _table(
            ("File", "Role", "Bytes", "sha256"),
            [(f.name, f.role, f"{f.size:,}", f.sha256) for f in files],
        ) + [""]
    lines += ["## Training data", "", *_training_data(datasets, model.task), ""]
    lines += ["## Training settings", ""]
    settings_rows = flat_settings(version.params)
    lines += _table(("Setting", "Value"), settings_rows) if settings_rows else ["None recorded."]
    if version.metrics:
        lines += ["", "Final figures of the training job:", ""]
        lines += _table(
            ("Figure", "Value"), [(k, _number(v)) for k, v in flat_settings(version.metrics)]
        )
    lines += ["", "## Evaluation results", ""]
    if evaluation is None:
        lines.append("_Not evaluated yet._")
    else:
        lines.append(
            f"Evaluation job {evaluation.job_id}, finished "
            f"{evaluation.finished_at:%Y-%m-%d %H:%M UTC}:"
        )
        lines.append("")
        lines += _table(
            ("Metric", "Value"), [(k, _number(v)) for k, v in sorted(evaluation.metrics.items())]
        )
    lines += ["", "## Known limitations", ""]
    if version.limitations.strip():
        lines += [version.limitations.strip(), ""]
    lines += [f"- {limit}" for limit in automatic_limits(version, datasets, evaluation)]
    lines += ["", "## Lineage", "", *_lineage_lines(version, jobs, datasets), ""]
    lines += [
        "## Audit events",
        "",
        *_audit_lines(version_audit_events(version) if events is None else events),
        "",
    ]
    lines += [f"_Card generated {timezone.now():%Y-%m-%d %H:%M UTC} from the model registry._", ""]
    return "\n".join(lines)
