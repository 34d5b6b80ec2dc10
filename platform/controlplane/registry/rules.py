"""The registry's shared rules: which jobs make which models, name and threshold checks,
the role a promotion decision needs, the model row lock and the MLflow mark."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of
from controlplane.registry.errors import InvalidRequest, NotAllowed, NotFound
from controlplane.registry.models import (
    ALIAS_PATTERN,
    ModelTask,
    RegisteredModel,
    alias_validator,
    model_name_validator,
)

# Job kinds that make a model, and the task of the model they make.
# A reward job is not one: it publishes reward/* (a model that scores text, not one that
# generates it); the ppo policy trained against it is.
TEXT_KINDS = ("pretrain", "sft", "lora", "qlora", "dpo", "ppo")
VISION_KINDS = ("diffusion", "gan", "vae")
KIND_TASK = {
    **{kind: ModelTask.TEXT_GENERATION for kind in TEXT_KINDS},
    **{kind: ModelTask.IMAGE_GENERATION for kind in VISION_KINDS},
}
THRESHOLD_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}
NEGATED_OPS = {"<=": ">", "<": ">=", ">=": "<", ">": "<="}
MAX_THRESHOLDS = 50
MAX_PROTECTED_ALIASES = 20


def check_model_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidRequest("a model name is text", fields={"name": ["must be text"]})
    try:
        model_name_validator(name)
    except ValidationError as error:
        raise InvalidRequest(error.messages[0], fields={"name": error.messages}) from None
    return name


def check_alias_name(alias: Any) -> str:
    if not isinstance(alias, str):
        raise InvalidRequest("an alias is text", fields={"alias": ["must be text"]})
    try:
        alias_validator(alias)
    except ValidationError as error:
        raise InvalidRequest(error.messages[0], fields={"alias": error.messages}) from None
    return alias


def require_review(project, actor, doing: str) -> None:
    """Owner or compliance role by membership: a platform admin is no second pair of eyes
    unless they are a member in that role."""
    if not role_allows(role_of(actor, project), Action.REVIEW):
        raise NotAllowed(
            f"{doing} needs the owner or compliance role in this project "
            "(a membership role: being a platform admin is not enough)"
        )


def known_alias_name(model, alias: Any) -> None:
    """NotFound for a name no alias can have (before it reaches a query: a NUL would 500)."""
    if not isinstance(alias, str) or not re.fullmatch(ALIAS_PATTERN, alias):
        raise NotFound(f"{model.name} has no alias @{alias}")


def locked_model(model: RegisteredModel) -> RegisteredModel:
    return RegisteredModel.objects.select_for_update().select_related("project").get(pk=model.pk)


def new_model(
    *, project, actor, name: str, task: str, description: str = "", audit=None
) -> RegisteredModel:
    """A new model row and its ``registered_model.created`` event, in one savepoint, so
    a caller can catch the IntegrityError of a name taken at the same moment. ``audit``
    is the append to use (the registration hook passes its deferred queue)."""
    from controlplane.audit.services import audit_append

    with transaction.atomic():
        model = RegisteredModel.objects.create(
            project=project, name=name, task=task, description=description, created_by=actor
        )
        (audit or audit_append)(
            project=project,
            actor=actor,
            action="registered_model.created",
            artifact=model,
            payload={"name": name, "task": task},
        )
    return model


def mark_mlflow_pending(model: RegisteredModel) -> None:
    """MLflow's mirror of this model is out of date: marked in this transaction, and the
    control worker asked to reconcile it once this commits (the beat catches a lost ask)."""
    from controlplane.registry.mlflow_sync import request_mlflow_sync

    request_mlflow_sync(model)


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def check_thresholds(raw: Any) -> list[dict[str, Any]]:
    """[{metric, op, value}] with op one of <=, <, >=, > and a finite number value."""
    if not isinstance(raw, list):
        raise InvalidRequest(
            "promotion_thresholds must be a list",
            fields={"promotion_thresholds": ["must be a list of {metric, op, value}"]},
        )
    if len(raw) > MAX_THRESHOLDS:
        raise InvalidRequest(
            f"at most {MAX_THRESHOLDS} thresholds",
            fields={"promotion_thresholds": [f"at most {MAX_THRESHOLDS} thresholds"]},
        )
    clean, errors = [], {}
    for index, item in enumerate(raw):
        where = f"promotion_thresholds.{index}"
        if not isinstance(item, dict) or set(item) != {"metric", "op", "value"}:
            errors[where] = ["must be an object with exactly metric, op and value"]
            continue
        metric, op, value = item["metric"], item["op"], finite_number(item["value"])
        if not isinstance(metric, str) or not 1 <= len(metric) <= 100 or not metric.isprintable():
            errors[f"{where}.metric"] = ["must be a metric name of 1-100 characters"]
        if op not in THRESHOLD_OPS:
            errors[f"{where}.op"] = [f"use one of {', '.join(THRESHOLD_OPS)}"]
        if value is None:
            errors[f"{where}.value"] = ["must be a finite number"]
        if not any(k.startswith(where) for k in errors):
            clean.append({"metric": metric, "op": op, "value": value})
    if errors:
        raise InvalidRequest("the promotion thresholds are invalid", fields=errors)
    return clean
