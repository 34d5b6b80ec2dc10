"""The rule catalogue: what each rule is called, what it means in plain words, where it
is checked (its gates), and its typed parameters with their validation.

A policy's rules are stored as {rule key: {"enabled": bool, param: value}} with every
rule and parameter present (`normalise` fills defaults), so a decision never has to guess.
What a rule decides is in decide.py; this module only describes and validates.
"""

from __future__ import annotations

import enum
import fnmatch
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controlplane.policies.errors import InvalidPolicy
from controlplane.policies.licences import canonical_id, unknown_id_message
from controlplane.serving.models import MAX_RETENTION_DAYS
from workers.protocol import Queue


class RuleKey(enum.StrEnum):
    LICENCES = "licences"
    DATA_PREPARATION = "data_preparation"
    RESIDENCY = "residency"
    PENDING_ERASURE = "pending_erasure"
    PROMOTION = "promotion"
    SERVING = "serving"
    COMPUTE = "compute"


class Gate(enum.StrEnum):
    """The moments a policy is asked."""

    DATASET_UPLOAD = "dataset.upload"  # before a version's bytes are written
    DATASET_READY = "dataset_version.ready"  # a version's files are checked (cannot refuse)
    JOB_CREATE = "job.create"  # a job is created or resumed
    ALIAS_MOVE = "alias.move"  # an alias is moved or a promotion requested
    PROMOTION_APPROVE = "promotion.approve"  # a promotion request is approved
    DEPLOYMENT_CREATE = "deployment.create"
    DEPLOYMENT_SWITCH = "deployment.switch"  # an alias a deployment follows moves
    DEPLOYMENT_UPDATE = "deployment.update"  # its guardrails or its archiving change
    DEPLOYMENT_START = "deployment.start"  # a stopped deployment serves again
    SERVING_SETTINGS = "serving_settings.update"  # the archive's retention changes


@dataclass(frozen=True)
class Param:
    name: str
    label: str
    help: str
    default: Any
    check: Callable[[Any, str], Any]  # (value, field path) -> clean value, or InvalidPolicy

    @property
    def choices(self) -> tuple[str, ...]:
        """The values of a one-of-a-few parameter (its check is `_choice(...)`), else ()."""
        return getattr(self.check, "choices", ())


@dataclass(frozen=True)
class Rule:
    key: RuleKey
    number: int
    title: str
    explanation: str  # shown wherever the rule blocks something
    gates: frozenset[Gate]
    params: tuple[Param, ...]

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def defaults(self) -> dict[str, Any]:
        return {"enabled": False, **{p.name: p.default for p in self.params}}


def _bad(path: str, message: str) -> InvalidPolicy:
    return InvalidPolicy(f"{path}: {message}", fields={path: [message]})


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "must be true or false")
    return value


def _number(low: float, high: float, *, integer: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, path: str):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(path, "must be a number")
        if integer and not float(value).is_integer():
            raise _bad(path, "must be a whole number")
        if not math.isfinite(value) or not low <= value <= high:
            raise _bad(path, f"must be between {low:g} and {high:g}")
        return int(value) if integer else float(value)

    return check


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def check(value: Any, path: str) -> str:
        if value not in choices:
            raise _bad(path, f"must be one of {', '.join(choices)}")
        return value

    check.choices = choices  # read by the policy page's form (a select)
    return check


def _text_list(
    item: Callable[[str, str], str], *, max_items: int = 100
) -> Callable[[Any, str], list[str]]:
    def check(value: Any, path: str) -> list[str]:
        if not isinstance(value, list):
            raise _bad(path, "must be a list")
        if len(value) > max_items:
            raise _bad(path, f"at most {max_items} entries")
        clean: list[str] = []
        for index, entry in enumerate(value):
            where = f"{path}.{index}"
            if not isinstance(entry, str) or not entry.strip() or len(entry) > 300:
                raise _bad(where, "must be a non-empty text of at most 300 characters")
            entry = item(entry.strip(), where)
            if entry not in clean:
                clean.append(entry)
        return clean

    return check


def _licence_id(value: str, path: str) -> str:
    canonical = canonical_id(value)
    if canonical is None:
        raise _bad(path, unknown_id_message(value))
    return canonical


def _source_pattern(value: str, path: str) -> str:
    if not value.isprintable():
        raise _bad(path, "must be printable text")
    try:
        re.compile(fnmatch.translate(value))
    except re.error as error:  # pragma: no cover - translate() escapes everything
        raise _bad(path, f"is not a valid pattern: {error}") from None
    return value


_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def _name(what: str) -> Callable[[str, str], str]:
    def check(value: str, path: str) -> str:
        if not _NAME.match(value):
            raise _bad(path, f"'{value}' is not a {what} (lower-case letters, digits, . _ -)")
        return value

    return check


def _bucket(value: str, path: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise _bad(path, f"'{value}' is not a bucket name (3-63 lower-case letters, digits, . -)")
    return value


QUEUES = tuple(q.value for q in Queue)  # the queues jobs go to (workers.protocol)
# Rule 4's choices: what follows for a model version flagged "trained on erased data",
# and what an erasure does with a job still reading a version it deletes.
TRAINED_ON_ERASED = ("warn", "block_serving", "require_retraining")
RUNNING_JOBS = ("wait", "cancel")


def _queue(value: str, path: str) -> str:
    if value not in QUEUES:
        raise _bad(path, f"'{value}' is not a queue; use {' or '.join(QUEUES)}")
    return value


def _thresholds(value: Any, path: str) -> list[dict[str, Any]]:
    from controlplane.registry.errors import InvalidRequest
    from controlplane.registry.rules import check_thresholds

    try:
        clean = check_thresholds(value)
    except InvalidRequest as error:
        fields = {
            key.replace("promotion_thresholds", path, 1): messages
            for key, messages in error.fields.items()
        }
        raise InvalidPolicy(f"{path}: {error.message}", fields=fields) from None
    return clean


def _pii_types(value: str, path: str) -> str:
    from controlplane.serving.guardrail_defaults import PII_TYPES

    if value not in PII_TYPES:
        raise _bad(path, f"'{value}' is not a PII type; known: {', '.join(PII_TYPES)}")
    return value


RULES: dict[RuleKey, Rule] = {
    rule.key: rule
    for rule in (
        Rule(
            RuleKey.LICENCES,
            1,
            "Licences and sources",
            "Data may be used for training only when its dataset's licence is one the "
            "project accepts and it comes from an accepted source, so that nothing is "
            "trained on data the organisation has no right to use.",
            frozenset({Gate.DATASET_UPLOAD, Gate.DATASET_READY, Gate.JOB_CREATE}),
            (
                Param(
                    "allowed_licences",
                    "Allowed licences",
                    "SPDX identifiers (MIT, CC-BY-4.0, CC0-1.0 ...) or LicenseRef-<name>. "
                    "An expression passes when an OR has one allowed branch and an AND "
                    "has all.",
                    [],
                    _text_list(_licence_id, max_items=200),
                ),
                Param(
                    "allowed_sources",
                    "Allowed sources",
                    "Patterns a dataset's source must match (* and ? wildcards, e.g. "
                    "https://www.gutenberg.org/*). Empty: any source.",
                    [],
                    _text_list(_source_pattern),
                ),
            ),
        ),
        Rule(
            RuleKey.DATA_PREPARATION,
            2,
            "Data preparation before training",
            "Models are trained only on data that went through the data pipeline with "
            "personal data redacted, and whose cleaned records stay under the toxicity "
            "and residual-PII limits, so that a model cannot learn and repeat them.",
            frozenset({Gate.JOB_CREATE}),
            (
                Param(
                    "require_pii_redaction",
                    "Require PII redaction",
                    "The training data's lineage must contain a data-pipeline run with the "
                    "pii stage on.",
                    True,
                    _bool,
                ),
                Param(
                    "required_pii_types",
                    "PII types that must be redacted",
                    "Empty: every type the engine knows.",
                    [],
                    _text_list(_pii_types, max_items=20),
                ),
                Param(
                    "max_toxic_share",
                    "Maximum toxic share after cleaning",
                    "Share of cleaned records at or above the toxicity threshold (0-1), as "
                    "the pipeline report measured it.",
                    0.01,
                    _number(0, 1),
                ),
                Param(
                    "max_pii_per_1k",
                    "Maximum PII per 1,000 records after cleaning",
                    "PII found in a sample of the cleaned records, per 1,000 records.",
                    0.0,
                    _number(0, 1_000_000),
                ),
            ),
        ),
        Rule(
            RuleKey.RESIDENCY,
            3,
            "Data residency",
            "A project's data may be stored only in the regions and buckets the project "
            "allows (for example to keep personal data in the EU); uploads and job outputs "
            "anywhere else are refused.",
            frozenset({Gate.DATASET_UPLOAD, Gate.DATASET_READY, Gate.JOB_CREATE}),
            (
                Param(
                    "allowed_regions",
                    "Allowed regions",
                    "Storage regions as the object store names them (eu-west-1 ...); "
                    "'local' is the embedded store. Empty: any region.",
                    [],
                    _text_list(_name("region")),
                ),
                Param(
                    "allowed_buckets",
                    "Allowed buckets",
                    "Bucket names. Empty: any bucket.",
                    [],
                    _text_list(_bucket),
                ),
            ),
        ),
        Rule(
            RuleKey.PENDING_ERASURE,
            4,
            "Pending erasure",
            "While a data subject's approved erasure is not finished, nothing is trained on "
            "the data that still holds them, and no model trained on it is promoted, so "
            "the erasure cannot be outrun; a model trained on data an erasure rewrote is "
            "flagged, and the policy says what follows.",
            frozenset(
                {
                    Gate.JOB_CREATE,
                    Gate.ALIAS_MOVE,
                    Gate.PROMOTION_APPROVE,
                    Gate.DEPLOYMENT_CREATE,
                    Gate.DEPLOYMENT_SWITCH,
                    Gate.DEPLOYMENT_START,
                }
            ),
            (
                Param(
                    "trained_on_erased",
                    "Models trained on erased data",
                    "warn: the flag is shown, nothing is refused; block_serving: a flagged "
                    "version is not deployed, switched to by a followed alias or promoted "
                    "to a protected alias; require_retraining: as block_serving, and the "
                    "scan reports every flagged version still at an alias or deployed.",
                    "warn",
                    _choice(*TRAINED_ON_ERASED),
                ),
                Param(
                    "running_jobs",
                    "Jobs reading data being erased",
                    "wait: the erasure waits for them to end; cancel: it cancels them.",
                    "wait",
                    _choice(*RUNNING_JOBS),
                ),
            ),
        ),
        Rule(
            RuleKey.PROMOTION,
            5,
            "Promotion",
            "A model reaches a protected alias (and a deployment) only with a passing "
            "evaluation and, when required, the approval of a compliance officer, besides "
            "the registry's four-eyes rule.",
            frozenset(
                {
                    Gate.ALIAS_MOVE,
                    Gate.PROMOTION_APPROVE,
                    Gate.DEPLOYMENT_CREATE,
                    Gate.DEPLOYMENT_SWITCH,
                    Gate.DEPLOYMENT_START,
                }
            ),
            (
                Param(
                    "aliases",
                    "Protected aliases",
                    "Aliases this rule protects (moved only through an approved promotion).",
                    ["production"],
                    _text_list(_name("alias"), max_items=20),
                ),
                Param(
                    "thresholds",
                    "Evaluation thresholds",
                    "Each {metric, op, value} the version's latest evaluation must meet, "
                    "e.g. val_loss <= 2.5.",
                    [],
                    _thresholds,
                ),
                Param(
                    "require_evaluation",
                    "Require a finished evaluation",
                    "Even without thresholds, the version must have been evaluated.",
                    True,
                    _bool,
                ),
                Param(
                    "require_compliance_approval",
                    "Approval by a compliance officer",
                    "The promotion must be approved by a member with the compliance role.",
                    True,
                    _bool,
                ),
                Param(
                    "apply_to_deployments",
                    "Also for deployments",
                    "A deployment may serve only versions that meet the evaluation above.",
                    True,
                    _bool,
                ),
            ),
        ),
        Rule(
            RuleKey.SERVING,
            6,
            "Serving",
            "Deployments keep the record an audit needs (every request archived, for a "
            "bounded time) and, when required, never pass personal data to the model.",
            frozenset(
                {
                    Gate.DEPLOYMENT_CREATE,
                    Gate.DEPLOYMENT_SWITCH,
                    Gate.DEPLOYMENT_UPDATE,
                    Gate.DEPLOYMENT_START,
                    Gate.SERVING_SETTINGS,
                }
            ),
            (
                Param(
                    "require_archive",
                    "Archive every request",
                    "Deployments must archive requests and responses.",
                    True,
                    _bool,
                ),
                Param(
                    "require_input_pii_redaction",
                    "Redact PII in inputs",
                    "Deployments must redact (or refuse) personal data in requests.",
                    False,
                    _bool,
                ),
                Param(
                    "retention_min_days",
                    "Minimum archive retention (days)",
                    "",
                    1,
                    _number(1, MAX_RETENTION_DAYS, integer=True),
                ),
                Param(
                    "retention_max_days",
                    "Maximum archive retention (days)",
                    "",
                    MAX_RETENTION_DAYS,
                    _number(1, MAX_RETENTION_DAYS, integer=True),
                ),
            ),
        ),
        Rule(
            RuleKey.COMPUTE,
            7,
            "Compute",
            "Jobs run only on the queues the project may use and with at most so many "
            "GPUs, a cheap guard against runaway cost.",
            frozenset({Gate.JOB_CREATE}),
            (
                Param(
                    "allowed_queues",
                    "Allowed queues",
                    "cpu and/or gpu.",
                    list(QUEUES),
                    _text_list(_queue, max_items=2),
                ),
                Param(
                    "max_gpus_per_job",
                    "Maximum GPUs per job",
                    "",
                    8,
                    _number(0, 4096, integer=True),
                ),
            ),
        ),
    )
}


def default_rules() -> dict[str, dict[str, Any]]:
    """Every rule off, parameters at their defaults: the platform default until staff edit it."""
    return {key.value: rule.defaults() for key, rule in RULES.items()}


def normalise(stored: Any) -> dict[str, dict[str, Any]]:
    """A stored rules dict with every rule and parameter present (new ones at defaults)."""
    rules = default_rules()
    for key, values in (stored or {}).items():
        if key in rules and isinstance(values, dict):
            rules[key].update({k: v for k, v in values.items() if k in rules[key]})
    return rules


def check_changes(current: dict[str, dict[str, Any]], changes: Any) -> dict[str, dict[str, Any]]:
    """`current` with `changes` ({rule: {param: value}}, any subset) applied and validated;
    errors name the field (`rules.licences.allowed_licences.0`)."""
    if not isinstance(changes, dict) or not changes:
        raise _bad("rules", "must be an object of {rule: {parameter: value}}")
    merged = {key: dict(values) for key, values in current.items()}
    errors: dict[str, list[str]] = {}
    for key, values in changes.items():
        path = f"rules.{key}"
        if key not in RULES:
            errors[path] = [f"unknown rule; the rules are {', '.join(RULES)}"]
            continue
        if not isinstance(values, dict):
            errors[path] = ["must be an object of {parameter: value}"]
            continue
        rule = RULES[RuleKey(key)]
        names = {"enabled", *(p.name for p in rule.params)}
        for name, value in values.items():
            where = f"{path}.{name}"
            if name not in names:
                errors[where] = [f"unknown parameter; {key} has {', '.join(sorted(names))}"]
                continue
            check = _bool if name == "enabled" else rule.param(name).check
            try:
                merged[key][name] = check(value, where)
            except InvalidPolicy as error:
                errors.update(error.fields)
    serving = merged[RuleKey.SERVING]
    if serving["retention_min_days"] > serving["retention_max_days"]:
        errors.setdefault("rules.serving.retention_min_days", []).append(
            "must not exceed retention_max_days"
        )
    if errors:
        raise InvalidPolicy(
            "the policy has invalid parameters: " + ", ".join(errors), fields=errors
        )
    return merged


def diff(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for key, values in after.items():
        for name, value in values.items():
            old = before.get(key, {}).get(name)
            if old != value:
                changed.setdefault(key, {})[name] = {"before": old, "after": value}
    return changed


def rules_for(gate: Gate) -> list[Rule]:
    return [rule for rule in RULES.values() if gate in rule.gates]
