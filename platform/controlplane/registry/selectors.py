"""Read queries of the registry, shared by the API, the pages and the services."""

from __future__ import annotations

import re

from django.db.models import Count, Max, Prefetch, Q, QuerySet

from controlplane.registry.models import (
    ALIAS_PATTERN,
    DEFAULT_PROTECTED_ALIASES,
    MODEL_NAME_PATTERN,
    ModelAlias,
    ModelEvaluation,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegisteredModel,
    RegistrySettings,
    VersionState,
)


def models_of(project) -> QuerySet[RegisteredModel]:
    """The project's models with `version_count` (not deleted) and `latest_number` (ready)."""
    return (
        RegisteredModel.objects.filter(project=project)
        .select_related("created_by")
        .prefetch_related("aliases__version")
        .annotate(
            version_count=Count("versions", filter=~Q(versions__state=VersionState.DELETED)),
            latest_number=Max("versions__number", filter=Q(versions__state=VersionState.READY)),
        )
        .order_by("name", "id")
    )


def model_in(project, name: str) -> RegisteredModel | None:
    # A name no model can have (a NUL, a slash...) never reaches the database.
    if not isinstance(name, str) or not re.fullmatch(MODEL_NAME_PATTERN, name):
        return None
    return (
        RegisteredModel.objects.filter(project=project, name=name)
        .select_related("project", "created_by")
        .first()
    )


def versions_of(model: RegisteredModel) -> QuerySet[ModelVersion]:
    """Every version, newest first (deleted ones stay as tombstones)."""
    return (
        ModelVersion.objects.filter(model=model)
        .select_related("model", "source_job", "created_by", "base_version__model")
        .prefetch_related("files")
        .order_by("-number")
    )


def version_in(model: RegisteredModel, number: int) -> ModelVersion | None:
    return versions_of(model).filter(number=number).first()


def versions_detailed(model: RegisteredModel, *, state: str | None = None):
    """Versions with their aliases and lineage ids (the API's full representation)."""
    versions = versions_of(model).prefetch_related(
        "aliases",
        "dataset_versions",
        "lineage_jobs",
        Prefetch(
            "evaluations",
            queryset=ModelEvaluation.objects.filter(finished_at__isnull=False).order_by(
                "-finished_at", "-id"
            ),
            to_attr="finished_evaluations",
        ),
    )
    return versions.filter(state=state) if state else versions


def alias_in(model: RegisteredModel, name: str) -> ModelAlias | None:
    if not isinstance(name, str) or not re.fullmatch(ALIAS_PATTERN, name):
        return None
    return aliases_of(model).filter(name=name).first()


def aliases_of(model: RegisteredModel) -> QuerySet[ModelAlias]:
    return (
        ModelAlias.objects.filter(model=model)
        .select_related("version", "previous_version", "moved_by")
        .order_by("name")
    )


def promotions_of(project, *, state: str | None = None) -> QuerySet[PromotionRequest]:
    requests = PromotionRequest.objects.filter(model__project=project).select_related(
        "model", "version", "from_version", "requested_by", "decided_by", "evaluation"
    )
    if state:
        requests = requests.filter(state=state)
    return requests.order_by("-requested_at", "-id")


def promotion_in(project, request_id: int) -> PromotionRequest | None:
    return promotions_of(project).filter(pk=request_id).first()


def pending_promotions(project) -> QuerySet[PromotionRequest]:
    return promotions_of(project, state=PromotionState.PENDING)


def latest_evaluation(version: ModelVersion) -> ModelEvaluation | None:
    """The version's most recent finished evaluation (the one the gate checks), or None."""
    prefetched = getattr(version, "finished_evaluations", None)  # versions_detailed
    if prefetched is not None:
        return prefetched[0] if prefetched else None
    return (
        ModelEvaluation.objects.filter(version=version, finished_at__isnull=False)
        .select_related("job")
        .order_by("-finished_at", "-id")
        .first()
    )


def registry_protected_aliases(project) -> list[str]:
    """The registry's own setting of protected aliases (or the default), as edited."""
    settings_row = RegistrySettings.objects.filter(project=project).first()
    if settings_row is None:
        return list(DEFAULT_PROTECTED_ALIASES)
    return list(settings_row.protected_aliases)


def policy_protected_aliases(project) -> list[str]:
    """The aliases the enabled promotion rule (rule 5) of the policy in force protects."""
    from controlplane.policies.rules import RuleKey
    from controlplane.policies.selectors import policy_in_force

    promotion = policy_in_force(project).enabled(RuleKey.PROMOTION)
    return list(promotion["aliases"]) if promotion else []


def protected_aliases(project) -> list[str]:
    """The aliases that need a promotion request: the registry's setting and those of the
    policy's promotion rule, so that unprotecting an alias in the registry's settings
    cannot side-step the policy."""
    names = registry_protected_aliases(project)
    names.extend(name for name in policy_protected_aliases(project) if name not in names)
    return names
