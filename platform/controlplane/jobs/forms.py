"""The "New job" page's form: one per job kind, derived from the kind's params schema.

The schema (params.py: generated from the engine's config dataclasses, plus the platform's
own fields in PLATFORM_FIELDS) is the one source of truth: every parameter the API takes is
a field here, named by its dotted API name (``train.max_iters``), so the platform's field
errors land on the field they name. Every field may be left blank: a blank field is left
out of the request and its default applies, exactly as when an API caller leaves it out.
The form checks only what a browser can get wrong (a number that is not one, JSON that does
not parse); the ranges, the datasets and the rest are checked by the API's validation
(kinds.py), which the view calls through the same service as the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.db.models import QuerySet

from controlplane.jobs.input_selectors import (
    model_jobs_for,
    ready_model_versions,
    ready_text_versions,
    token_shard_versions,
    uploads_newest_first,
)
from controlplane.jobs.models import Job
from controlplane.jobs.params import PLATFORM_FIELDS, param_schema
from controlplane.jobs.posttrain import POSTTRAIN_KINDS, pair_versions_for
from controlplane.names import validate_name
from controlplane.projects.models import Project
from workers.protocol import JobKind

CHOICES_SHOWN = 200  # the newest this many uploads, versions or jobs in a select


# Labels where the engine's short name would puzzle a reader; the API name is in the help.
_LABELS = {
    "lr": "Learning rate",
    "min_lr": "Final learning rate",
    "max_iters": "Steps",
    "warmup_iters": "Warmup steps",
    "block_size": "Context length",
    "grad_accum": "Gradient accumulation",
    "r": "Rank",
    "kl_coef": "KL coefficient",
    "eval_iters": "Eval batches",
}
_SECTION_TITLES = {
    "train": "Training",
    "optim": "Optimiser",
    "model": "Model",
    "tokenizer": "Tokenizer",
    "lora": "LoRA adapters",
    "dpo": "DPO",
    "ppo": "PPO",
}
# Fieldsets in reading order: what is trained, how long and how fast, then the rest;
# adapters last (optional for most kinds).
_SECTION_ORDER = ("train", "optim", "model", "tokenizer", "dpo", "ppo", "lora")


def _label(dotted: str) -> str:
    name = dotted.rsplit(".", 1)[-1]
    return _LABELS.get(name, name.replace("_", " ").capitalize())


def _default_text(leaf: dict[str, Any]) -> str | None:
    if "default" not in leaf:
        return None
    value = leaf["default"]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " | ".join(_escape_line(str(item)) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _escape_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape_line(text: str) -> str:
    out, chars = [], iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append("\n" if following == "n" else following)
        else:
            out.append(char)
    return "".join(out)


class LinesField(forms.CharField):
    """A list of strings, one a line (``\\n`` writes a newline inside one); blank: None."""

    widget = forms.Textarea(attrs={"rows": 3})

    def __init__(self, **options: Any) -> None:
        super().__init__(strip=False, **options)

    def to_python(self, value: Any) -> list[str] | None:
        text = super().to_python(value)
        if "\x00" in text:  # the CharField's own check sees the list, not the text
            raise forms.ValidationError("Null characters are not allowed.")
        lines = [_unescape_line(line) for line in text.splitlines() if line.strip()]
        return lines or None


class JSONObjectField(forms.CharField):
    """A JSON object (the data pipeline's stages); blank: None (the engine's default)."""

    widget = forms.Textarea(attrs={"rows": 10, "class": "code"})

    def to_python(self, value: Any) -> dict | None:
        from controlplane.api.parsers import JSONTextError, loads_storable

        text = super().to_python(value).strip()
        if not text:
            return None
        try:
            # Not json.loads: NaN, NUL or deep nesting would reach jsonb (or the stack).
            parsed = loads_storable(text)
        except JSONTextError as error:
            raise forms.ValidationError(f"not valid JSON: {error}") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError("must be a JSON object")
        return parsed


def schema_leaf_field(dotted: str, leaf: dict[str, Any]) -> forms.Field:
    """An optional form field for one schema leaf; its default shows as the placeholder."""
    default = _default_text(leaf)
    help_parts = [leaf.get("description", "")]
    if "x-default-with-adapters" in leaf:
        help_parts.append(f"default {default}, {leaf['x-default-with-adapters']:g} with adapters")
    elif default is not None:
        help_parts.append(f"default {default}")
    help_parts.append(f"API: {dotted}")
    options: dict[str, Any] = {
        "required": False,
        "label": _label(dotted),
        "help_text": " · ".join(part for part in help_parts if part),
    }
    kind = leaf.get("type")
    if "enum" in leaf:
        helps = leaf.get("x-choices-help", {})
        blank = f"default ({default})" if default is not None else "default"
        choices = [("", blank)] + [
            (c, f"{c}: {helps[c]}" if c in helps else c) for c in leaf["enum"]
        ]
        return forms.ChoiceField(choices=choices, **options)
    if kind == "boolean":
        return forms.TypedChoiceField(
            choices=[("", f"default ({default})"), ("true", "yes"), ("false", "no")],
            coerce=lambda value: value == "true",
            empty_value=None,
            **options,
        )
    if kind == "array":
        options["help_text"] += " · one a line; \\n writes a newline"
        return LinesField(**options)
    if kind == "object":
        return JSONObjectField(**options)
    if kind == "string":
        return forms.CharField(
            max_length=leaf.get("maxLength"),
            widget=forms.TextInput(attrs={"placeholder": default or ""}),
            **options,
        )
    field_class = forms.IntegerField if kind == "integer" else forms.FloatField
    # Django's bounds are inclusive; an exclusive edge is refused by the platform's check,
    # whose message lands on this field.
    number = field_class(
        min_value=leaf.get("minimum", leaf.get("exclusiveMinimum")),
        max_value=leaf.get("maximum", leaf.get("exclusiveMaximum")),
        **options,
    )
    number.widget.attrs["placeholder"] = default or ""
    return number


@dataclass
class Section:
    """A fieldset of the form: the inputs, the kind's general settings, or one of its
    settings objects (train, optim, lora...)."""

    name: str
    title: str
    note: str = ""
    fields: list[str] = field(default_factory=list)


def _leaves(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    leaves = []
    for name, leaf in schema.get("properties", {}).items():
        if leaf.get("type") == "object" and "properties" in leaf:
            leaves += _leaves(leaf, f"{prefix}{name}.")
        else:
            leaves.append((f"{prefix}{name}", leaf))
    return leaves


# -- the platform's fields: what a job reads, picked from the project's own rows ------------


def _version_choices(versions: QuerySet) -> list[tuple[int, str]]:
    return [(v.pk, f"{v.dataset.slug} v{v.number}") for v in versions[:CHOICES_SHOWN]]


def _job_choices(jobs: QuerySet[Job]) -> list[tuple[int, str]]:
    return [
        (job.pk, f"job {job.pk} ({job.kind}" + (f", {job.experiment})" if job.experiment else ")"))
        for job in jobs[:CHOICES_SHOWN]
    ]


@dataclass(frozen=True)
class PlatformField:
    label: str
    help: str
    blank: str  # what leaving the select blank means


def _platform_field(kind: JobKind, name: str, project: Project) -> forms.Field:
    """A select of the project's rows for a platform field (or the model name's text)."""
    from controlplane.jobs.posttrain import reward_jobs_for
    from controlplane.registry.models import model_name_validator

    if name == "register_as":
        return forms.CharField(
            required=False,
            max_length=100,
            validators=[model_name_validator],
            label="Register as",
            help_text="the model name the job's result is registered under when it succeeds "
            "(blank: not registered) · API: register_as",
        )
    posttrain = kind in POSTTRAIN_KINDS
    if name == "upload_id":
        spec = PlatformField("Upload", "the file to inspect", "pick an upload")
        uploads = uploads_newest_first(project)[:CHOICES_SHOWN]
        choices = [(u.pk, f"{u.filename} (upload {u.pk})") for u in uploads]
    elif name == "dataset_version_id" and posttrain:
        spec = PlatformField(
            "Dataset version", "JSON-lines pairs to train on", "the built-in Shakespeare pairs"
        )
        choices = _version_choices(pair_versions_for(project))
    elif name == "dataset_version_id" and kind == JobKind.EVALUATE:
        spec = PlatformField(
            "Dataset version",
            "token shards whose val split the text model is scored on",
            "the one the model was trained on",
        )
        choices = _version_choices(token_shard_versions(project))
    elif name == "dataset_version_id" and kind == JobKind.PRETRAIN:
        spec = PlatformField(
            "Dataset version",
            "a version the data pipeline tokenized (it holds token shards)",
            "pick a version",
        )
        choices = _version_choices(token_shard_versions(project))
    elif name == "dataset_version_id":
        spec = PlatformField("Dataset version", "the text to clean and tokenize", "pick a version")
        choices = _version_choices(ready_text_versions(project))
    elif name == "base_job_id":
        spec = PlatformField(
            "Base model", "the succeeded job whose model to start from", "pick a job"
        )
        choices = _job_choices(model_jobs_for(project))
    elif name == "reward_job_id":
        spec = PlatformField("Reward model", "a succeeded reward job", "pick a reward job")
        choices = _job_choices(reward_jobs_for(project))
    elif name == "model_version_id":
        spec = PlatformField("Model version", "a ready registered version", "pick a version")
        versions = ready_model_versions(project)[:CHOICES_SHOWN]
        choices = [(v.pk, f"{v.model.name} v{v.number}") for v in versions]
    else:
        raise ValueError(f"no form field for the platform field {name!r}")
    return forms.TypedChoiceField(
        choices=[("", spec.blank), *choices],
        coerce=int,
        empty_value=None,
        required=False,
        label=spec.label,
        help_text=f"{spec.help} · API: {name}",
    )


# -- the form ----------------------------------------------------------------------------------

_SECTION_NOTES = {
    # reward, dpo and ppo train all the weights unless lora is set (x-adapters: optional).
    "lora": "optional for reward, dpo and ppo: set any of these to train LoRA adapters only",
}


class NewJobForm(forms.Form):
    """A job of `kind` in `project`: its platform fields, an experiment name, and every
    engine setting of the kind's schema, grouped as the schema nests them."""

    experiment = forms.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        required=False,
        validators=[validate_name],
        error_messages={"invalid": "letters, digits, '.', '_' and '-' only"},
        help_text="groups runs for comparison on the experiments page",
    )

    def __init__(self, data=None, *, kind: JobKind, project: Project) -> None:
        super().__init__(data)
        self.kind = kind
        schema = param_schema(kind)
        inputs = Section("inputs", "Inputs", fields=[])
        for name in PLATFORM_FIELDS[kind]:
            self.fields[name] = _platform_field(kind, name, project)
            inputs.fields.append(name)
        inputs.fields.append("experiment")
        general = Section("general", "Settings")
        nested: dict[str, Section] = {}
        adapters_optional = schema.get("x-adapters") == "optional"
        for dotted, leaf in _leaves(schema):
            self.fields[dotted] = schema_leaf_field(dotted, leaf)
            if kind == JobKind.DATA_PIPELINE and dotted == "pipeline":
                self.fields[dotted].initial = _default_pipeline_text()
            if "." not in dotted:
                general.fields.append(dotted)
                continue
            top = dotted.split(".", 1)[0]
            if top not in nested:
                note = _SECTION_NOTES.get(top, "") if adapters_optional else ""
                description = schema["properties"][top].get("description", "")
                title = _SECTION_TITLES.get(top, top.replace("_", " ").capitalize())
                nested[top] = Section(top, title, note=note or description)
            nested[top].fields.append(dotted)
        # The preset (the model's shape, or the whole recipe) is the first choice made.
        general.fields.sort(key=lambda name: name != "preset")
        ordered = sorted(
            nested.values(),
            key=lambda section: (
                _SECTION_ORDER.index(section.name)
                if section.name in _SECTION_ORDER
                else len(_SECTION_ORDER)
            ),
        )
        self.sections = [s for s in (inputs, general, *ordered) if s.fields]

    def fieldsets(self) -> list[tuple[Section, list[forms.BoundField]]]:
        return [(section, [self[name] for name in section.fields]) for section in self.sections]

    def fields_in_error(self) -> int:
        return sum(1 for name in self.errors if name in self.fields)

    def job_params(self) -> dict[str, Any]:
        """The API's `params`: the fields given, nested by their dotted names."""
        params: dict[str, Any] = {}
        for name, value in self.cleaned_data.items():
            if name == "experiment" or value is None or value == "":
                continue
            *sections, leaf = name.split(".")
            node = params
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
        return params

    def add_job_errors(self, errors: dict[str, list[str]]) -> None:
        """The platform's field errors on the fields they name; a section's ("lora") or
        the request's own above the form, naming the setting."""
        for name, problems in errors.items():
            for problem in problems:
                if name in self.fields:
                    self.add_error(name, problem)
                else:
                    self.add_error(None, f"{name}: {problem}")


def _default_pipeline_text() -> str:
    """The engine's default stages to start editing from; blank (the same defaults apply)
    if the engine cannot be asked, so the page still opens."""
    from controlplane.engine_tools import EngineToolError, pipeline_defaults

    try:
        return json.dumps({"stages": pipeline_defaults()["stages"]}, indent=1)
    except (EngineToolError, OSError, ValueError, KeyError):
        return ""
