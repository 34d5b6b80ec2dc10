"""YAML config files into typed dataclasses, with the key named in every error.

    raw, source = read_config(path, ["train.steps=200"], ConfigError)
    config = build(RunConfig, raw, ConfigError)

One builder for every engine config (pre-training, image generators, post-training, the
data pipeline): a YAML file mirrors the dataclasses (lists of them and ``dict[int, float]``
maps included); an unknown or missing key, a value of the wrong type or out of range
raises the caller's error class naming the key, e.g.
``unknown key 'train.stesp' (did you mean 'train.steps'?)``. Overrides ``section.key=value``
are parsed as YAML and go through the same checks (minGPT's rule: never ``exec``). After a
dataclass is built its ``validate()`` runs, if it has one.

A field's range and help live in its metadata, written once with :func:`setting`::

    max_iters: int = setting(5000, minimum=1, maximum=10_000_000, help="optimizer steps")

``build`` refuses a value outside the range (naming the key), and engine/jobparams.py turns
the same metadata into the JSON Schema the platform validates job parameters with, so the
platform and the engine refuse the same values.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

# The metadata keys of a field's range, as JSON Schema spells them.
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_LIST_RULES = ("minItems", "maxItems", "minLength", "maxLength")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    **rules: Any,
) -> Any:
    """A dataclass field with its range (``minimum``, ``maximum``, ``exclusiveMinimum``,
    ``exclusiveMaximum``; for lists ``minItems``/``maxItems`` and the items' ``minLength``/
    ``maxLength``) and a help line, in JSON Schema's words so the schema copies them."""
    unknown = set(rules) - set(BOUNDS) - set(_LIST_RULES)
    if unknown:
        raise TypeError(f"setting(): unknown rule(s) {sorted(unknown)}")
    metadata = {"help": help, **rules} if help else dict(rules)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def range_problem(value: Any, rules: dict[str, Any]) -> str | None:
    """Why ``value`` breaks the field's range, or None. Booleans and None are not numbers."""
    if isinstance(value, list):
        if len(value) < rules.get("minItems", 0) or len(value) > rules.get("maxItems", len(value)):
            return f"must hold {_span(rules.get('minItems', 0), rules.get('maxItems'))} items"
        for item in value:
            if isinstance(item, str) and not (
                rules.get("minLength", 0) <= len(item) <= rules.get("maxLength", len(item))
            ):
                span = _span(rules.get("minLength", 0), rules.get("maxLength"))
                return f"items must be {span} characters long"
        return None
    if isinstance(value, str):
        if len(value) < rules.get("minLength", 0) or len(value) > rules.get(
            "maxLength", len(value)
        ):
            return f"must be {_span(rules.get('minLength', 0), rules.get('maxLength'))} characters long"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    low, high = rules.get("minimum"), rules.get("maximum")
    above, below = rules.get("exclusiveMinimum"), rules.get("exclusiveMaximum")
    if low is not None and value < low:
        return f"must be at least {low}"
    if high is not None and value > high:
        return f"must be at most {high}"
    if above is not None and value <= above:
        return f"must be greater than {above}"
    if below is not None and value >= below:
        return f"must be less than {below}"
    return None


def _span(low: int, high: int | None) -> str:
    return f"at least {low}" if high is None else f"{low} to {high}"


def check_ranges(instance: Any, error: type[Exception], prefix: str = "") -> None:
    """Every field of ``instance`` against the range in its metadata (see :func:`setting`)."""
    for spec in dataclasses.fields(instance):
        if not any(rule in spec.metadata for rule in (*BOUNDS, *_LIST_RULES)):
            continue
        value = getattr(instance, spec.name)
        problem = range_problem(value, spec.metadata)
        if problem is not None:
            raise error(f"{prefix}{spec.name} {problem}, got {value!r}")


def read_config(
    path: str | Path | None, overrides: list[str] | None, error: type[Exception]
) -> tuple[dict[str, Any], str]:
    """The raw mapping of a YAML file (or ``{}``) with overrides applied, and its source name."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise error(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as problem:
            raise error(f"{path} is not valid YAML: {problem}") from None
        if not isinstance(raw, dict):
            raise error(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"override {item!r} must look like section.key=value")
        set_dotted(raw, key.strip(), yaml.safe_load(value), error)
    return raw, source


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, error: type[Exception]) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise error(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def build(cls: type, raw: Any, error: type[Exception], prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping; fields marked internal are not keys."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise error(f"{where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    known = {f.name for f in fields}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = (
                f" (did you mean '{prefix}{close[0]}'?)"
                if close
                else f" (known: {', '.join(sorted(known))})"
            )
            raise error(f"unknown key '{prefix}{key}'{hint}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = build(hints[key], value, error, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, hints[key], f"{prefix}{key}", error)
    for spec in fields:
        required = (
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        )
        if required and spec.name not in kwargs:
            raise error(f"missing key '{prefix}{spec.name}' (it has no default)")
    # Sections left out of the YAML take their defaults, which are valid by construction;
    # the ones given are checked here, then cross-section rules at the top level.
    try:
        instance = cls(**kwargs)
        check_ranges(instance, error, prefix)
        validate = getattr(instance, "validate", None)
        if validate is not None:
            validate()
    except error:
        raise
    except ValueError as problem:  # a dataclass's own check (e.g. GPTConfig) names its key
        raise error(str(problem)) from None
    return instance


def coerce(value: Any, hint: Any, key: str, error: type[Exception]) -> Any:
    if dataclasses.is_dataclass(hint):  # e.g. an item of list[InputConfig]
        return build(hint, value, error, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise error(f"{key} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise error(f"{key} must be a list, got {value!r}")
        return [coerce(item, item_hint, f"{key}[{i}]", error) for i, item in enumerate(value)]
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise error(f"{key} must be a mapping, got {value!r}")
        return {
            coerce(_map_key(k, key_hint), key_hint, f"{key}.{k}", error): coerce(
                v, value_hint, f"{key}.{k}", error
            )
            for k, v in value.items()
        }
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(option for option in options if option is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise error(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        # YAML reads 1e-3 as a string (it wants 1.0e-3); accept both spellings.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise error(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise error(f"{key} must be a string, got {value!r}")
        return value
    return value


def _map_key(key: Any, hint: Any) -> Any:
    """JSON writes every map key as a string: ``{5: 0.15}`` comes back as ``{"5": 0.15}``."""
    if hint is int and isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    return key
