"""Job parameters checked against the engine's schemas, with their defaults filled in.

The schemas (param_schemas.json, one per kind) are generated from the engine's config
dataclasses by ``python -m engine.jobparams``, the one place defaults, ranges and presets
are written; a test regenerates the file and fails when it is stale. The web process reads
the file and never imports the engine (it would load torch). The validator understands the
subset of JSON Schema the generator emits, and writes the messages users have always had
(``"must be between 1 and 50"``) under dotted field names (``train.max_iters``).

A value of null counts as left out everywhere: its default applies.
"""

from __future__ import annotations

import copy
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("param_schemas.json")

# What the platform itself resolves (database rows, files), per kind: checked by kinds.py
# and posttrain.py, never by the engine. Declared here, once.
# `register_as` (every kind that makes a model): the model name the job's result is
# registered under when it succeeds (controlplane/registry).
PLATFORM_FIELDS: dict[str, tuple[str, ...]] = {
    "inspect": ("upload_id",),
    "evaluate": ("model_version_id", "dataset_version_id"),
    "data_pipeline": ("dataset_version_id",),
    "pretrain": ("dataset_version_id", "register_as"),
    "diffusion": ("register_as",),
    "gan": ("register_as",),
    "vae": ("register_as",),
    **{
        kind: ("base_job_id", "dataset_version_id", "register_as")
        for kind in ("sft", "lora", "qlora", "dpo")
    },
    # A reward model scores text and generates none: nothing to register.
    "reward": ("base_job_id", "dataset_version_id"),
    "ppo": ("base_job_id", "reward_job_id", "dataset_version_id", "register_as"),
}

# The inspect job is the platform's own (no engine config behind it): its schema lives here.
INSPECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "preview_records": {
            "type": "integer",
            "minimum": 1,
            "maximum": 50,
            "default": 5,
            "description": "records shown on the job page",
        },
        "read_rate_limit_mb_s": {
            "type": "number",
            "minimum": 0.01,
            "maximum": 100000,
            "description": "read rate limit (MB/s); blank: none",
        },
    },
}


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    schemas = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    schemas.pop("$comment", None)
    schemas["inspect"] = INSPECT_SCHEMA
    return schemas


def param_schema(kind: str) -> dict[str, Any]:
    """A kind's params schema (a copy: callers may adjust it)."""
    return copy.deepcopy(_schemas()[kind])


def param_leaf(kind: str, dotted: str) -> dict[str, Any]:
    """The schema of one parameter, e.g. ``param_leaf("pretrain", "train.max_iters")``."""
    node = _schemas()[kind]
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def kinds_with_resources(flag: str = "") -> list[str]:
    """The training kinds that take `resources` (engine/train/resources.py); with `flag`
    ("x-data-parallel", "x-shardable"), those whose resources schema sets it."""
    return sorted(
        kind
        for kind, schema in _schemas().items()
        if "resources" in schema["properties"]
        and (not flag or schema["properties"]["resources"].get(flag))
    )


class _Checker:
    """Walks params and schema together; collects {dotted field: [message]}."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def fail(self, where: str, message: str) -> None:
        self.errors[where] = [message]

    def value(self, schema: dict[str, Any], value: Any, where: str) -> Any:
        kind = schema.get("type")
        if kind == "object":
            return self.section(schema, value, where)
        if kind == "array":
            return self.array(schema, value, where)
        if kind == "boolean":
            if not isinstance(value, bool):
                return self.fail(where, "must be true or false")
            return value
        if kind == "string":
            return self.string(schema, value, where)
        return self.number(schema, value, where)

    def number(self, schema: dict[str, Any], value: Any, where: str) -> Any:
        integer = schema["type"] == "integer"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            return self.fail(where, f"must be {'an integer' if integer else 'a number'}")
        message = range_message(schema, value)
        if message:
            return self.fail(where, message)
        return value if integer else float(value)

    def string(self, schema: dict[str, Any], value: Any, where: str) -> Any:
        choices = schema.get("enum")
        if choices is not None:
            if not isinstance(value, str) or value not in choices:
                return self.fail(where, f"use {_one_of(choices)}")
            return value
        if not isinstance(value, str) or len(value) < schema.get("minLength", 0):
            return self.fail(where, "must be a non-empty string")
        return value

    def array(self, schema: dict[str, Any], value: Any, where: str) -> Any:
        items = schema.get("items", {})
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        shortest, longest = items.get("minLength", 0), items.get("maxLength")
        if (
            not isinstance(value, list)
            or len(value) < low
            or (high is not None and len(value) > high)
            or not all(
                isinstance(item, str)
                and len(item) >= shortest
                and (longest is None or len(item) <= longest)
                for item in value
            )
        ):
            count = (
                f"a list of {low} to {high}"
                if high is not None
                else "a non-empty list of"
                if low
                else "a list of"
            )
            strings = (
                f"strings, each {shortest} to {longest} characters"
                if longest is not None
                else "non-empty strings"
                if shortest
                else "strings"
            )
            return self.fail(where, f"must be {count} {strings}")
        return list(value)

    def section(self, schema: dict[str, Any], raw: Any, where: str) -> dict[str, Any] | None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            return self.fail(where, "must be an object")
        properties = schema.get("properties")
        if properties is None:  # an object the engine checks itself (the pipeline config)
            return raw
        unknown = sorted(set(raw) - set(properties))
        if unknown:
            known = ", ".join(properties)
            return self.fail(where, f"unknown key(s) {', '.join(map(str, unknown))}; use {known}")
        return self.fill(properties, raw, f"{where}.")

    def fill(self, properties: dict[str, Any], raw: dict, prefix: str) -> dict[str, Any]:
        clean = {}
        for name, schema in properties.items():
            value = raw.get(name)
            if value is None:
                if schema.get("x-optional"):
                    continue
                if schema.get("type") == "object" and "properties" in schema:
                    value = {}
                elif "default" in schema:
                    clean[name] = copy.deepcopy(schema["default"])
                    continue
                else:
                    continue
            checked = self.value(schema, value, f"{prefix}{name}")
            if checked is not None:
                clean[name] = checked
        return clean


def range_message(schema: dict[str, Any], value: float) -> str | None:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if "exclusiveMinimum" in schema and value == schema["exclusiveMinimum"]:
        return f"must be greater than {low:g}"
    if (
        (low is not None and value < low)
        or (high is not None and value > high)
        or ("exclusiveMaximum" in schema and value == high)
    ):
        if low is None:
            return f"must be at most {high:g}"
        if high is None:
            return f"must be at least {low:g}"
        excluded = f" ({high:g} excluded)" if "exclusiveMaximum" in schema else ""
        return f"must be between {low:g} and {high:g}{excluded}"
    return None


def _one_of(choices: list[str]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def check_params(
    kind: str, params: dict[str, Any], *, schema: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(the params the schema knows, defaults filled in; field errors). Platform fields
    are left to the caller; any other unknown name is an error."""
    schema = schema or _schemas()[kind]
    checker = _Checker()
    known = set(schema["properties"]) | set(PLATFORM_FIELDS[kind])
    for name in params.keys() - known:
        checker.fail(str(name), "unknown parameter")
    clean = checker.fill(schema["properties"], params, "")
    return clean, checker.errors
