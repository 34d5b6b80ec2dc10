"""A deployment's guardrails: defaults from the training data's pipeline, and the checks
of the ones a user sets.

The defaults mirror how the model's training data was cleaned, so that a served model
sees inputs the way it saw its data: walk the version's lineage to the data_pipeline
jobs that made its dataset versions and read their stages. A pii stage means the model
learned from text with PII replaced by placeholders: inputs are redacted the same way
(its types); no pii stage: inputs pass unredacted. The toxicity stage's threshold is the
flag threshold. What the model writes is always PII-masked and toxicity-flagged by
default (it may repeat what its data held; flagging changes no answer). Several pipelines
combine to the strictest: the union of PII types, the lowest threshold. A lineage with
no pipeline job gets the platform defaults (`GuardrailConfig()`), `source` "platform".
"""

from __future__ import annotations

import math
from typing import Any

from workers.serve.protocol import GuardrailConfig, to_dict

# engine/data/pii.py PII_TYPES (the platform never imports the engine; a test checks that
# the two lists agree).
PII_TYPES = ("EMAIL", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "NATIONAL_ID", "PHONE")
PII_MODES = ("off", "redact", "refuse")
PII_OUTPUT_MODES = ("off", "redact")
TOXICITY_MODES = ("off", "flag", "refuse")
# Fields a user may set; `source` is the platform's note of where the values came from.
SETTABLE = ("pii", "pii_types", "pii_output", "toxicity", "toxicity_threshold")
PIPELINE_KIND = "data_pipeline"


def _stages(params: Any) -> dict[str, dict] | None:
    """{stage name: its settings} of a data_pipeline job's params; None if unreadable.

    The platform stores the engine's normalised config (`pipeline.stages` as a list of
    one-key mappings); a job made before that, with no `pipeline`, ran the engine's
    default stages, every one of them with its defaults."""
    if not isinstance(params, dict):
        return None
    pipeline = params.get("pipeline")
    if pipeline is None or (isinstance(pipeline, dict) and "stages" not in pipeline):
        return {"pii": {}, "toxicity": {}}
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    if not isinstance(stages, list):
        return None
    found: dict[str, dict] = {}
    for entry in stages:
        if isinstance(entry, str):
            found[entry] = {}
        elif isinstance(entry, dict) and len(entry) == 1:
            ((name, settings),) = entry.items()
            found[str(name)] = settings if isinstance(settings, dict) else {}
    return found


def _pipelines_of(version) -> list[tuple[Any, str]]:
    """[(data_pipeline job, "pipeline job 12 of dataset plays v2")] behind the version."""
    from controlplane.datasets.models import DatasetVersion

    made = (
        DatasetVersion.objects.filter(model_versions=version, produced_by__kind=PIPELINE_KIND)
        .select_related("dataset", "produced_by")
        .order_by("produced_by_id")
    )
    found: dict[int, tuple[Any, str]] = {}
    for dataset_version in made:
        job = dataset_version.produced_by
        found.setdefault(
            job.pk,
            (
                job,
                f"pipeline job {job.pk} of dataset {dataset_version.dataset.slug} "
                f"v{dataset_version.number}",
            ),
        )
    for job in version.lineage_jobs.filter(kind=PIPELINE_KIND).order_by("pk"):
        found.setdefault(job.pk, (job, f"pipeline job {job.pk}"))
    return [found[key] for key in sorted(found)]


def guardrail_defaults(version) -> GuardrailConfig:
    """The guardrails a new deployment of `version` gets (see the module's docstring)."""
    platform = GuardrailConfig()
    readable = []
    for job, label in _pipelines_of(version):
        stages = _stages(job.params)
        if stages is not None:
            readable.append((stages, label))
    if not readable:
        return platform
    pii_types: set[str] = set()
    thresholds = []
    for stages, _label in readable:
        if "pii" in stages:
            types = stages["pii"].get("types")
            wanted = types if isinstance(types, list) else PII_TYPES
            pii_types.update(t for t in wanted if t in PII_TYPES)
        threshold = stages.get("toxicity", {}).get("threshold")
        if _is_number(threshold) and 0.0 <= threshold <= 1.0:
            thresholds.append(float(threshold))
    redacts = bool(pii_types)  # a pii stage with no types redacted nothing
    labels = [label for _stages_of, label in readable]
    source = labels[0] if len(labels) == 1 else f"{labels[0]} and {len(labels) - 1} more"
    return GuardrailConfig(
        pii="redact" if redacts else "off",
        # Every type: an empty list means "all" to the replica; keep the list explicit.
        pii_types=[t for t in PII_TYPES if t in pii_types] if redacts else [],
        pii_output=platform.pii_output,
        toxicity=platform.toxicity,
        toxicity_threshold=min(thresholds) if thresholds else platform.toxicity_threshold,
        source=source,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def guardrails_checked(raw: Any, base: GuardrailConfig) -> dict[str, Any]:
    """`base` with the fields of `raw` (a user's partial guardrails) applied, as a dict.

    InvalidRequest naming each bad field as `guardrails.<field>`."""
    from controlplane.serving.errors import InvalidRequest

    if not isinstance(raw, dict):
        raise InvalidRequest(
            "guardrails must be an object", fields={"guardrails": ["expected an object"]}
        )
    errors: dict[str, list[str]] = {}
    for key in raw:
        if key not in SETTABLE:
            hint = " (set by the platform)" if key == "source" else ""
            errors[f"guardrails.{key}"] = [f"unknown field{hint}; use {', '.join(SETTABLE)}"]
    for key, modes in (
        ("pii", PII_MODES),
        ("pii_output", PII_OUTPUT_MODES),
        ("toxicity", TOXICITY_MODES),
    ):
        if key in raw and (not isinstance(raw[key], str) or raw[key] not in modes):
            errors[f"guardrails.{key}"] = [f"must be one of {', '.join(modes)}"]
    if "pii_types" in raw:
        types = raw["pii_types"]
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            errors["guardrails.pii_types"] = ["must be a list of PII types"]
        else:
            unknown = [t for t in types if t not in PII_TYPES]
            if unknown:
                errors["guardrails.pii_types"] = [
                    f"unknown PII type {unknown[0]!r}; known: {', '.join(PII_TYPES)}"
                ]
    if "toxicity_threshold" in raw:
        threshold = raw["toxicity_threshold"]
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            errors["guardrails.toxicity_threshold"] = ["must be a number between 0 and 1"]
    if errors:
        raise InvalidRequest("the guardrails are invalid", fields=errors)
    merged = to_dict(base)
    for key in SETTABLE:
        if key in raw:
            value = raw[key]
            if key == "pii_types":
                value = [t for t in PII_TYPES if t in value]  # canonical order, no repeats
            elif key == "toxicity_threshold":
                value = float(value)
            merged[key] = value
    changed = any(merged[key] != getattr(base, key) for key in SETTABLE)
    if changed and not base.source.startswith("custom"):
        merged["source"] = f"custom (defaults from {base.source})"
    return merged
