"""Serving's write side: deployments (create, scale, stop, start, settings) and the hook
that makes deployments follow their alias.

Every function is keyword-only, audits what it changes and raises a `ServingError`
subclass (errors.py) carrying the HTTP status for what the caller can fix. Services only
change the Deployment row (what is wanted); replicas are the scheduler's
(scheduler.py), which reads the wanted state at each node's next sync.

Locks: the deployment row, then the audit chain, last (as in the registry).
"""

from __future__ import annotations

import re
from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.registry.models import ModelAlias, ModelVersion, VersionState
from controlplane.serving.errors import Conflict, InvalidRequest, NotFound
from controlplane.serving.guardrail_defaults import guardrail_defaults, guardrails_checked
from controlplane.serving.models import (
    DEPLOYMENT_NAME_PATTERN,
    Deployment,
    DeploymentState,
    Device,
)
from workers.serve.protocol import GuardrailConfig, to_dict


# The model's validators, checked here so that a bad value is a 400 naming the field, not a
# database error.
def _field_range(name: str) -> tuple[int, int]:
    """(min, max) of a Deployment field, from its validators: one place owns the range."""
    validators = Deployment._meta.get_field(name).validators
    low = next(v.limit_value for v in validators if isinstance(v, MinValueValidator))
    high = next(v.limit_value for v in validators if isinstance(v, MaxValueValidator))
    return low, high


LIMITS = {
    name: _field_range(name)
    for name in ("replicas", "max_batch", "max_queue", "rate_limit_per_minute")
}


def _integer(name: str, value: Any) -> int:
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be a whole number from {low} to {high}",
            fields={name: [f"a whole number from {low} to {high}"]},
        )
    return value


def _boolean(name: str, value: Any) -> bool:
    # Only a real bool: "false" or 0 from a careless client must not silently flip a
    # compliance setting either way.
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false", fields={name: ["true or false"]})
    return value


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(DEPLOYMENT_NAME_PATTERN, name):
        message = (
            "a deployment name is 1-63 lower-case letters, digits or '-', "
            "starting with a letter or digit"
        )
        raise InvalidRequest(message, fields={"name": [message]})
    return name


def _ready(version: ModelVersion, field: str) -> ModelVersion:
    if version.state != VersionState.READY:
        raise Conflict(
            f"{version.model.name} v{version.number} is {version.state}; only a ready "
            "version can be deployed",
            fields={field: [f"v{version.number} is {version.state}"]},
        )
    return version


def _resolve_target(model, version, alias) -> tuple[ModelVersion | None, str, ModelVersion]:
    """(pinned version or None, alias or "", the version to serve now)."""
    if (version is None) == (alias is None or alias == ""):
        raise InvalidRequest(
            "name either a version or an alias to deploy",
            fields={"version": ["give a version or an alias, not both"]},
        )
    if version is not None:
        if isinstance(version, ModelVersion):
            found = version if version.model_id == model.pk else None
        elif isinstance(version, int) and not isinstance(version, bool):
            found = ModelVersion.objects.filter(model=model, number=version).first()
        else:
            raise InvalidRequest("version must be a number", fields={"version": ["a number"]})
        if found is None:
            raise InvalidRequest(
                f"{model.name} has no version {getattr(version, 'number', version)}",
                fields={"version": [f"{model.name} has no such version"]},
            )
        return _ready(found, "version"), "", found
    if not isinstance(alias, str):
        raise InvalidRequest("alias must be text", fields={"alias": ["text"]})
    alias = alias.removeprefix("@")
    found_alias = (
        ModelAlias.objects.filter(model=model, name=alias).select_related("version").first()
    )
    if found_alias is None:
        raise InvalidRequest(
            f"{model.name} has no alias @{alias}",
            fields={"alias": [f"{model.name} has no alias @{alias}"]},
        )
    return None, alias, _ready(found_alias.version, "alias")


def deployment_create(
    *,
    project,
    actor,
    name: str,
    model,
    version: ModelVersion | int | None = None,
    alias: str | None = None,
    replicas: int = 1,
    device: str = Device.CPU,
    max_batch: int = 16,
    max_queue: int = 64,
    guardrails: dict[str, Any] | None = None,
    rate_limit_per_minute: int = 600,
    archive_requests: bool = True,
) -> Deployment:
    """Deploy a ready version, or follow an alias of the model (it switches when the alias
    moves). Guardrails default to the training data's pipeline settings
    (guardrail_defaults.py); a `guardrails` dict overrides some of them. With
    `archive_requests=False` its replicas record no request or answer."""
    name = _check_name(name)
    archive_requests = _boolean("archive_requests", archive_requests)
    if model is None or model.project_id != project.pk:
        raise NotFound("no such model in this project", fields={"model": ["no such model"]})
    if device not in Device.values:
        raise InvalidRequest(
            f"device must be one of {', '.join(Device.values)}",
            fields={"device": [f"one of {', '.join(Device.values)}"]},
        )
    settings = {
        key: _integer(key, value)
        for key, value in (
            ("replicas", replicas),
            ("max_batch", max_batch),
            ("max_queue", max_queue),
            ("rate_limit_per_minute", rate_limit_per_minute),
        )
    }
    pinned, alias_name, target = _resolve_target(model, version, alias)
    defaults = guardrail_defaults(target)
    rails = (
        guardrails_checked(guardrails, defaults) if guardrails is not None else to_dict(defaults)
    )
    if Deployment.objects.filter(project=project, name=name).exists():
        raise Conflict(
            f"a deployment named '{name}' already exists in this project",
            fields={"name": ["taken"]},
        )
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                project=project,
                name=name,
                model=model,
                pinned_version=pinned,
                alias=alias_name,
                target_version=target,
                device=device,
                guardrails=rails,
                archive_requests=archive_requests,
                created_by=actor,
                **settings,
            )
            audit_append(
                project=project,
                actor=actor,
                action="deployment.created",
                artifact=deployment,
                payload={
                    "name": name,
                    "model": model.name,
                    "follows": deployment.follows,
                    "version": target.number,
                    "version_id": target.pk,
                    "device": device,
                    "guardrails": rails,
                    "archive_requests": archive_requests,
                    **settings,
                },
            )
    except IntegrityError:
        raise Conflict(
            f"a deployment named '{name}' already exists in this project",
            fields={"name": ["taken"]},
        ) from None
    return deployment


def _locked(deployment: Deployment) -> Deployment:
    locked = (
        Deployment.objects.select_for_update(of=("self",))
        .select_related("project", "model", "target_version", "pinned_version")
        .get(pk=deployment.pk)
    )
    return locked


def deployment_scale(*, deployment: Deployment, actor, replicas: int) -> Deployment:
    replicas = _integer("replicas", replicas)
    with transaction.atomic():
        locked = _locked(deployment)
        before = locked.replicas
        if before == replicas:
            return locked
        locked.replicas = replicas
        locked.save(update_fields=["replicas", "updated_at"])
        audit_append(
            project=locked.project,
            actor=actor,
            action="deployment.scaled",
            artifact=locked,
            payload={"name": locked.name, "from": before, "to": replicas},
        )
    return locked


def deployment_update(
    *,
    deployment: Deployment,
    actor,
    guardrails: dict[str, Any] | None = None,
    rate_limit_per_minute: int | None = None,
    archive_requests: bool | None = None,
) -> Deployment:
    """Change the guardrails (fields not given keep their value), the per-token rate
    limit, or whether requests are archived. The new guardrails and archive flag are in
    the replica specs of the next sync; a replica process reads its spec when it starts."""
    changes: dict[str, Any] = {}
    if rate_limit_per_minute is not None:
        changes["rate_limit_per_minute"] = _integer("rate_limit_per_minute", rate_limit_per_minute)
    if archive_requests is not None:
        changes["archive_requests"] = _boolean("archive_requests", archive_requests)
    with transaction.atomic():
        locked = _locked(deployment)
        if guardrails is not None:
            current = GuardrailConfig.from_dict(locked.guardrails)
            changes["guardrails"] = guardrails_checked(guardrails, current)
        changes = {k: v for k, v in changes.items() if getattr(locked, k) != v}
        if not changes:
            return locked
        before = {key: getattr(locked, key) for key in changes}
        for key, value in changes.items():
            setattr(locked, key, value)
        locked.save(update_fields=[*changes, "updated_at"])
        audit_append(
            project=locked.project,
            actor=actor,
            action="deployment.updated",
            artifact=locked,
            payload={"name": locked.name, "before": before, "after": changes},
        )
    return locked


def deployment_stop(*, deployment: Deployment, actor, reason: str = "") -> Deployment:
    """Stop serving: the scheduler drains every replica (requests in flight finish), and
    the nodes answer 503 `deployment_stopped` with the reason. Stopping twice is a no-op."""
    if not isinstance(reason, str):
        raise InvalidRequest("reason must be text", fields={"reason": ["text"]})
    reason = reason.strip() or "stopped"
    with transaction.atomic():
        locked = _locked(deployment)
        if locked.state == DeploymentState.STOPPED:
            return locked
        before = locked.state
        locked.state = DeploymentState.STOPPED
        locked.reason = reason
        locked.stopped_at = timezone.now()
        locked.save(update_fields=["state", "reason", "stopped_at", "updated_at"])
        audit_append(
            project=locked.project,
            actor=actor,
            action="deployment.stopped",
            artifact=locked,
            payload={"name": locked.name, "from_state": before, "reason": reason},
        )
    return locked


def deployment_start(*, deployment: Deployment, actor) -> Deployment:
    """Start a stopped or failed deployment again (a deployment following an alias
    serves where the alias points now). Its failure count starts again from zero."""
    with transaction.atomic():
        locked = _locked(deployment)
        if locked.state == DeploymentState.RUNNING:
            return locked
        target = locked.target_version
        if locked.alias:
            alias = (
                ModelAlias.objects.filter(model=locked.model, name=locked.alias)
                .select_related("version")
                .first()
            )
            if alias is None:
                raise Conflict(
                    f"{locked.model.name} has no alias @{locked.alias} any more; "
                    "create a new deployment"
                )
            target = alias.version
        _ready(target, "version")
        before = locked.state
        locked.state = DeploymentState.RUNNING
        locked.reason = ""
        locked.stopped_at = None
        locked.target_version = target
        locked.save(update_fields=["state", "reason", "stopped_at", "target_version", "updated_at"])
        audit_append(
            project=locked.project,
            actor=actor,
            action="deployment.started",
            artifact=locked,
            payload={
                "name": locked.name,
                "from_state": before,
                "version": target.number,
                "version_id": target.pk,
            },
        )
    return locked


# The registry's hook -------------------------------------------------------------------


def on_alias_moved(alias: ModelAlias) -> None:
    """Called by the registry when an alias moves: every deployment following it targets
    the new version (the scheduler then switches its replicas over). Runs after the
    move's commit, in its own transaction: inside it, it would take deployment rows
    after the audit chain, against the lock order of every other writer."""
    # robust: a failure here must not turn the committed move into an error; the scheduler
    # retargets the followers at the next sync anyway.
    transaction.on_commit(
        lambda: follow_alias(model_id=alias.model_id, alias=alias.name), robust=True
    )


def follow_alias(*, model_id: int, alias: str) -> list[Deployment]:
    """Point the deployments following `alias` at its version; audit `deployment.switching`
    for each."""
    with transaction.atomic():
        moves = retarget_followers(model_id=model_id, alias=alias)
        for move in moves:
            audit_switching(*move)
    return [deployment for deployment, _before, _alias in moves]


def retarget_followers(*, model_id: int, alias: str) -> list[tuple[Deployment, Any, ModelAlias]]:
    """Rows only (the caller audits each move with `audit_switching`, after its other row
    changes): [(deployment, the version it targeted, the alias)]. The scheduler calls it
    too, so a hook lost to a crash between the move's commit and the hook is caught up."""
    found = ModelAlias.objects.filter(model_id=model_id, name=alias)
    found = found.select_related("version", "moved_by").first()
    if found is None or found.version.state != VersionState.READY:
        return []
    following = (
        Deployment.objects.select_for_update(of=("self",))
        .filter(model_id=model_id, alias=alias)
        .exclude(target_version=found.version)
        .select_related("project", "target_version", "model")
        .order_by("pk")
    )
    moves = []
    for deployment in following:
        before = deployment.target_version
        deployment.target_version = found.version
        deployment.save(update_fields=["target_version", "updated_at"])
        moves.append((deployment, before, found))
    return moves


def audit_switching(deployment: Deployment, before, alias: ModelAlias) -> None:
    audit_append(
        project=deployment.project,
        actor=alias.moved_by,
        action="deployment.switching",
        artifact=deployment,
        payload={
            "name": deployment.name,
            "alias": alias.name,
            "from_version": before.number,
            "from_version_id": before.pk,
            "to_version": alias.version.number,
            "to_version_id": alias.version.pk,
            "state": deployment.state,
        },
    )
