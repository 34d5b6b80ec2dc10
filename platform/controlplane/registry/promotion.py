"""Aliases and their promotion: the evaluation gate, four-eyes requests, rollback.

An unprotected alias moves at once (one audited event). A protected one (project
setting, `production` by default) never moves directly: the target's latest finished
evaluation must pass the model's thresholds, then a PromotionRequest waits for a second
member with the owner or compliance role; the requester never decides their own.
Decisions and moves of one model are serialised on its row; a decision is also a
conditional UPDATE on `state = pending`, so of two approvals one wins.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.policies.model_gates import check_alias_move, record_alias_move
from controlplane.projects.selectors import role_of
from controlplane.registry.errors import Conflict, InvalidRequest, NotAllowed, NotFound
from controlplane.registry.models import (
    DEFAULT_PROTECTED_ALIASES,
    ModelAlias,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegistrySettings,
    VersionState,
)
from controlplane.registry.rules import (
    MAX_PROTECTED_ALIASES,
    NEGATED_OPS,
    THRESHOLD_OPS,
    check_alias_name,
    finite_number,
    known_alias_name,
    locked_model,
    mark_mlflow_pending,
    require_review,
)
from controlplane.registry.selectors import latest_evaluation, protected_aliases
from controlplane.serving.services import on_alias_moved


def evaluation_gate(*, version) -> list[str]:
    """What keeps `version` from a protected alias: [] when its latest finished evaluation
    passes every threshold of its model."""
    evaluation = latest_evaluation(version)
    label = f"v{version.number}"
    if evaluation is None:
        return [f"no finished evaluation of {label}; run an evaluate job on it first"]
    metrics = evaluation.metrics if isinstance(evaluation.metrics, dict) else {}
    problems = []
    for threshold in version.model.promotion_thresholds or []:
        metric, op, limit = threshold["metric"], threshold["op"], threshold["value"]
        rule = f"{metric} {op} {limit:g}"
        actual = finite_number(metrics.get(metric))
        if actual is None:
            problems.append(
                f"{metric} was not measured by evaluation {evaluation.pk} (threshold {rule})"
            )
        elif not THRESHOLD_OPS[op](actual, limit):
            problems.append(f"{metric} {actual:g} {NEGATED_OPS[op]} {limit:g} (threshold {rule})")
    return problems


def _move(model, alias_name, version, actor, *, reason, rollback, request=None) -> ModelAlias:
    """Point the alias at `version` (the model row is locked by the caller) and audit it."""
    now = timezone.now()
    alias = ModelAlias.objects.select_for_update().filter(model=model, name=alias_name).first()
    previous = alias.version if alias is not None else None
    if alias is None:
        alias = ModelAlias.objects.create(
            model=model, name=alias_name, version=version, moved_by=actor, moved_at=now
        )
    else:
        alias.previous_version = previous
        alias.version = version
        alias.moved_by = actor
        alias.moved_at = now
        alias.save(update_fields=["previous_version", "version", "moved_by", "moved_at"])
    mark_mlflow_pending(model)
    audit_append(
        project=model.project,
        actor=actor,
        action="model_alias.moved",
        artifact=alias,
        payload={
            "model": model.name,
            "alias": alias_name,
            "previous_version": previous.number if previous is not None else None,
            "version": version.number,
            "version_id": version.pk,
            "reason": reason,
            "rollback": rollback,
            "promotion_request": request.pk if request is not None else None,
        },
    )
    on_alias_moved(alias)  # deployments following the alias switch to the new version
    return alias


def withdraw_request(request: PromotionRequest, actor, reason: str) -> None:
    PromotionRequest.objects.filter(pk=request.pk, state=PromotionState.PENDING).update(
        state=PromotionState.WITHDRAWN,
        decided_by=actor,
        decided_at=timezone.now(),
        decision_reason=reason,
    )
    audit_append(
        project=request.model.project,
        actor=actor,
        action="promotion_request.withdrawn",
        artifact=request,
        payload={
            "model": request.model.name,
            "alias": request.alias,
            "version": request.version.number,
            "version_id": request.version_id,
            "reason": reason,
        },
    )


def _ready_version_of(model, version) -> ModelVersion:
    if version is None or version.model_id != model.pk:
        raise NotFound(f"that version is not a version of {model.name}")
    if version.state != VersionState.READY:
        raise Conflict(
            f"{model.name} v{version.number} is {version.state}; only a ready version "
            "can be given an alias"
        )
    return version


def alias_set(
    *, model, actor, alias, version, reason="", is_rollback=False
) -> ModelAlias | PromotionRequest:
    """Move an unprotected alias now (-> ModelAlias); for a protected one, check the
    evaluation gate and open a promotion request (-> PromotionRequest)."""
    alias = check_alias_name(alias)
    version = _ready_version_of(model, version)
    reason = reason or ""
    protected = alias in protected_aliases(model.project)
    if protected:
        problems = evaluation_gate(version=version)
        if problems:
            raise Conflict(
                f"cannot promote {model.name} v{version.number} to @{alias}: " + "; ".join(problems)
            )
    current = ModelAlias.objects.filter(model=model, name=alias).first()
    if not protected and current is not None and current.version_id == version.pk:
        return current  # nothing moves, nothing to ask
    # The policy (rules 4, 5; and 5, 6 for the deployments that follow an alias moving
    # now), before the transaction: a refusal's audit event commits, the move does not.
    policy = check_alias_move(
        project=model.project, actor=actor, version=version, alias=alias, moves_now=not protected
    )
    with transaction.atomic():
        locked = locked_model(model)
        current = ModelAlias.objects.filter(model=locked, name=alias).first()
        if not protected:
            if current is not None and current.version_id == version.pk:
                return current
            moved = _move(locked, alias, version, actor, reason=reason, rollback=is_rollback)
            record_alias_move(policy, actor=actor)
            return moved
        if current is not None and current.version_id == version.pk:
            raise Conflict(f"@{alias} already points at {model.name} v{version.number}")
        for pending in PromotionRequest.objects.filter(
            model=locked, alias=alias, state=PromotionState.PENDING
        ).select_related("model", "version"):
            withdraw_request(pending, actor, f"replaced by a newer request for v{version.number}")
        request = PromotionRequest.objects.create(
            model=locked,
            alias=alias,
            version=version,
            from_version=current.version if current is not None else None,
            is_rollback=is_rollback,
            reason=reason,
            evaluation=latest_evaluation(version),
            requested_by=actor,
        )
        audit_append(
            project=locked.project,
            actor=actor,
            action="promotion_request.opened",
            artifact=request,
            payload={
                "model": locked.name,
                "alias": alias,
                "version": version.number,
                "version_id": version.pk,
                "from_version": current.version.number if current is not None else None,
                "rollback": is_rollback,
                "reason": reason,
                "evaluation": request.evaluation_id,
            },
        )
        record_alias_move(policy, actor=actor)
    return request


def alias_rollback(*, model, actor, alias, reason="") -> ModelAlias | PromotionRequest:
    """Point the alias back at the version it pointed at before (same rules as a move)."""
    known_alias_name(model, alias)
    current = ModelAlias.objects.filter(model=model, name=alias).select_related("previous_version")
    current = current.first()
    if current is None:
        raise NotFound(f"{model.name} has no alias @{alias}")
    if current.previous_version is None:
        raise Conflict(f"@{alias} has no previous version to roll back to")
    return alias_set(
        model=model,
        actor=actor,
        alias=alias,
        version=current.previous_version,
        reason=reason or f"rollback of @{alias} to v{current.previous_version.number}",
        is_rollback=True,
    )


def alias_delete(*, model, actor, alias) -> None:
    """Remove an alias. A protected one only by an owner or compliance officer."""
    known_alias_name(model, alias)
    if alias in protected_aliases(model.project):
        require_review(model.project, actor, f"removing the protected alias @{alias}")
    with transaction.atomic():
        locked = locked_model(model)
        current = ModelAlias.objects.filter(model=locked, name=alias).select_related("version")
        current = current.first()
        if current is None:
            raise NotFound(f"{model.name} has no alias @{alias}")
        number, version_id, alias_id = current.version.number, current.version_id, current.pk
        current.delete()
        mark_mlflow_pending(locked)
        audit_append(
            project=locked.project,
            actor=actor,
            action="model_alias.deleted",
            artifact=("modelalias", alias_id),
            payload={
                "model": locked.name,
                "alias": alias,
                "version": number,
                "version_id": version_id,
            },
        )


def _decide(request, actor, reason, *, approve: bool) -> PromotionRequest:
    verb = "approving" if approve else "rejecting"
    project = request.model.project
    require_review(project, actor, f"{verb} a promotion")
    if request.requested_by_id == actor.pk:
        raise NotAllowed(
            "you requested this promotion; a second owner or compliance officer must "
            f"{'approve' if approve else 'reject'} it"
        )
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest(
            f"{verb} a promotion needs a reason", fields={"reason": ["give a reason"]}
        )
    policy = None
    if approve:
        # The policy (rules 4, 5 with the approver's role; 5, 6 for the deployments that
        # follow the alias) before the transaction, so that a refusal's audit commits.
        # What the transaction re-checks (pending, ready) is checked first here too, so
        # that a request decided meanwhile is no policy decision.
        fresh = PromotionRequest.objects.select_related("version").get(pk=request.pk)
        if fresh.state != PromotionState.PENDING:
            raise Conflict(f"this promotion request is already {fresh.state}")
        if fresh.version.state != VersionState.READY:
            raise Conflict(
                f"{request.model.name} v{fresh.version.number} is {fresh.version.state} now"
            )
        policy = check_alias_move(
            project=project,
            actor=actor,
            version=fresh.version,
            alias=fresh.alias,
            moves_now=True,
            approver_role=role_of(actor, project) or "",
        )
    with transaction.atomic():
        model = locked_model(request.model)
        request = PromotionRequest.objects.select_related("version", "model").get(pk=request.pk)
        request.model = model
        if request.state != PromotionState.PENDING:
            raise Conflict(f"this promotion request is already {request.state}")
        version = request.version
        if approve:
            if version.state != VersionState.READY:
                raise Conflict(f"{model.name} v{version.number} is {version.state} now")
            problems = evaluation_gate(version=version)
            if problems:
                raise Conflict(
                    f"cannot promote {model.name} v{version.number} to @{request.alias}: "
                    + "; ".join(problems)
                )
        state = PromotionState.APPROVED if approve else PromotionState.REJECTED
        now = timezone.now()
        claimed = PromotionRequest.objects.filter(
            pk=request.pk, state=PromotionState.PENDING
        ).update(state=state, decided_by=actor, decided_at=now, decision_reason=reason.strip())
        if claimed != 1:
            raise Conflict("this promotion request was decided meanwhile")
        request.state, request.decided_by, request.decided_at = state, actor, now
        request.decision_reason = reason.strip()
        audit_append(
            project=project,
            actor=actor,
            action=f"promotion_request.{state}",
            artifact=request,
            payload={
                "model": model.name,
                "alias": request.alias,
                "version": version.number,
                "version_id": version.pk,
                "requested_by": request.requested_by_id,
                "reason": request.decision_reason,
            },
        )
        if approve:
            _move(
                model,
                request.alias,
                version,
                actor,
                reason=request.reason,
                rollback=request.is_rollback,
                request=request,
            )
            record_alias_move(policy, actor=actor)
    return request


def promotion_approve(*, request, actor, reason) -> PromotionRequest:
    return _decide(request, actor, reason, approve=True)


def promotion_reject(*, request, actor, reason) -> PromotionRequest:
    return _decide(request, actor, reason, approve=False)


def promotion_withdraw(*, request, actor) -> PromotionRequest:
    if request.requested_by_id != actor.pk:
        raise NotAllowed("only the member who requested this promotion can withdraw it")
    with transaction.atomic():
        locked = PromotionRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state != PromotionState.PENDING:
            raise Conflict(f"this promotion request is already {locked.state}")
        withdraw_request(request, actor, "withdrawn by the requester")
    request.refresh_from_db()
    return request


def registry_settings_update(*, project, actor, protected_aliases) -> RegistrySettings:
    names = protected_aliases
    if not isinstance(names, list) or len(names) > MAX_PROTECTED_ALIASES:
        raise InvalidRequest(
            "protected_aliases must be a list",
            fields={"protected_aliases": [f"a list of at most {MAX_PROTECTED_ALIASES} aliases"]},
        )
    errors = {}
    clean: list[str] = []
    for index, name in enumerate(names):
        try:
            name = check_alias_name(name)
        except InvalidRequest as error:
            errors[f"protected_aliases.{index}"] = error.fields["alias"]
            continue
        if name not in clean:
            clean.append(name)
    if errors:
        raise InvalidRequest("the protected aliases are invalid", fields=errors)
    with transaction.atomic():
        row, _ = RegistrySettings.objects.select_for_update().get_or_create(
            project=project, defaults={"protected_aliases": list(DEFAULT_PROTECTED_ALIASES)}
        )
        before = list(row.protected_aliases)
        row.protected_aliases = clean
        row.updated_by = actor
        row.save()
        audit_append(
            project=project,
            actor=actor,
            action="registry_settings.updated",
            artifact=row,
            payload={"protected_aliases": {"before": before, "after": clean}},
        )
    return row
