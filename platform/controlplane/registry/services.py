"""The registry's write side: models, versions, aliases, promotion requests, settings.

Every function is keyword-only, audits what it changes and raises a `RegistryError`
subclass (errors.py) carrying the HTTP status for what the caller can fix.

Registration is two steps so that no byte passes through the web process:
`version_register` writes rows only (the version in `registering`, its files with the
sha256 and size the worker reported, the lineage) and, once committed, asks the control
worker to run `finish_registration`, which copies each file server-side into the
version's own prefix, reads every copy back against the recorded sha256, reads the
architecture from the headers and makes the version `ready` (or `refused`). A broker
outage only delays that: `registry_sweep` (beat) finishes versions left registering.

The code lives by concept: `registration.py` (registering, copying, verifying, the
sweep), `promotion.py` (aliases, the evaluation gate, four-eyes requests, settings),
`lineage.py` (model files, figures, lineage), `rules.py` (shared checks); this module
holds models and version edits and is the one import for callers (pages, API, admin).

Locks, in this order: the job row (the success hook runs under it), the model row
(version numbers, alias moves and promotion decisions of one model are serialised on
it), a version row, then the audit chain, last. `finish_registration` holds only its
version row (SKIP LOCKED) and the chain; it marks the model for MLflow after commit.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.registry.errors import Conflict, InvalidRequest
from controlplane.registry.models import (
    ModelAlias,
    ModelTask,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegisteredModel,
    SyncState,
    VersionState,
)
from controlplane.registry.promotion import (  # noqa: F401 - the registry's service API
    alias_delete,
    alias_rollback,
    alias_set,
    evaluation_gate,
    promotion_approve,
    promotion_reject,
    promotion_withdraw,
    registry_settings_update,
    withdraw_request,
)
from controlplane.registry.registration import (  # noqa: F401 - the registry's service API
    FINISH_TASK,
    finish_registration,
    register_from_job,
    registry_sweep,
    request_finish,
    version_register,
)
from controlplane.registry.rules import (  # noqa: F401 - the registry's service API
    KIND_TASK,
    check_model_name,
    check_thresholds,
    locked_model,
    mark_mlflow_pending,
    new_model,
)
from controlplane.serving.selectors import deployments_serving


def model_create(*, project, actor, name, task, description="") -> RegisteredModel:
    name = check_model_name(name)
    if task not in ModelTask.values:
        raise InvalidRequest(
            f"task must be one of {', '.join(ModelTask.values)}",
            fields={"task": [f"use {' or '.join(ModelTask.values)}"]},
        )
    if RegisteredModel.objects.filter(project=project, name=name).exists():
        raise Conflict(f"a model named '{name}' already exists in this project")
    try:
        return new_model(
            project=project, actor=actor, name=name, task=task, description=description or ""
        )
    except IntegrityError:
        raise Conflict(f"a model named '{name}' already exists in this project") from None


def model_update(*, model, actor, description=None, promotion_thresholds=None) -> RegisteredModel:
    changes: dict[str, Any] = {}
    if description is not None:
        if not isinstance(description, str):
            raise InvalidRequest("description must be text", fields={"description": ["text"]})
        changes["description"] = description
    if promotion_thresholds is not None:
        changes["promotion_thresholds"] = check_thresholds(promotion_thresholds)
    if not changes:
        return model
    with transaction.atomic():
        locked = locked_model(model)
        before = {name: getattr(locked, name) for name in changes}
        for name, value in changes.items():
            setattr(locked, name, value)
        locked.mlflow_state = SyncState.PENDING
        locked.save(update_fields=[*changes, "mlflow_state", "updated_at"])
        audit_append(
            project=locked.project,
            actor=actor,
            action="registered_model.updated",
            artifact=locked,
            payload={"before": before, "after": changes},
        )
    return locked


def version_update(
    *, version, actor, intended_use=None, limitations=None, description=None
) -> ModelVersion:
    changes = {
        name: value
        for name, value in (
            ("intended_use", intended_use),
            ("limitations", limitations),
            ("description", description),
        )
        if value is not None
    }
    for name, value in changes.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be text", fields={name: ["must be text"]})
    if not changes:
        return version
    if version.state == VersionState.DELETED:
        raise Conflict(f"{version.model.name} v{version.number} is deleted")
    with transaction.atomic():
        before = {name: getattr(version, name) for name in changes}
        ModelVersion.objects.filter(pk=version.pk).update(**changes)
        for name, value in changes.items():
            setattr(version, name, value)
        mark_mlflow_pending(version.model)
        audit_append(
            project=version.model.project,
            actor=actor,
            action="model_version.updated",
            artifact=version,
            payload={"number": version.number, "before": before, "after": changes},
        )
    return version


def version_delete(*, version, actor) -> ModelVersion:
    """A tombstone: the row stays (lineage, audit, numbers), its objects go. 409 while an
    alias points at it or it is still registering."""
    if ModelVersion.objects.filter(pk=version.pk, state=VersionState.REGISTERING).exists():
        # Checked before locking: its files may be being copied under the version's lock.
        raise Conflict(
            f"{version.model.name} v{version.number} is still registering; delete it once "
            "it is ready or refused"
        )
    with transaction.atomic():
        model = locked_model(version.model)
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        version.model = model
        label = f"{model.name} v{version.number}"
        if version.state == VersionState.DELETED:
            return version
        if version.state == VersionState.REGISTERING:
            raise Conflict(f"{label} is still registering; delete it once it is ready or refused")
        aliases = sorted(ModelAlias.objects.filter(version=version).values_list("name", flat=True))
        if aliases:
            raise Conflict(
                f"{label} is what {', '.join('@' + a for a in aliases)} points at; "
                "move or delete the alias first"
            )
        serving = deployments_serving(version)
        if serving:
            raise Conflict(
                f"{label} is served by deployment(s) {', '.join(serving)}; stop them or "
                "deploy another version first"
            )
        for request in PromotionRequest.objects.filter(
            version=version, state=PromotionState.PENDING
        ):
            withdraw_request(request, actor, f"{label} was deleted")
        # The plain store: a request must not wait out a long outage (the 503 says retry).
        from controlplane.storage import object_store

        object_store().delete_prefix(version.object_prefix)
        version.state = VersionState.DELETED
        version.deleted_at = timezone.now()
        version.save(update_fields=["state", "deleted_at"])
        mark_mlflow_pending(model)
        audit_append(
            project=model.project,
            actor=actor,
            action="model_version.deleted",
            artifact=version,
            payload={"model": model.name, "number": version.number},
        )
    return version
