"""The registry in the Django admin: read-only, except deciding promotion requests.

Models, versions, aliases and evaluations change only through the services (audited,
locked, checked), so the admin shows them and nothing more. Pending promotion requests
can be approved or rejected here, through the same services and rules: the requester
never decides their own request, and the decider needs the owner or compliance role in
that project, which a superuser needs too.
"""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin, ReadOnlyInline, decide_with_reason
from controlplane.registry.errors import RegistryError
from controlplane.registry.models import (
    ModelAlias,
    ModelEvaluation,
    ModelFile,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegisteredModel,
    RegistrySettings,
)


@admin.register(RegisteredModel)
class RegisteredModelAdmin(ReadOnlyAdmin):
    list_display = ["name", "project", "task", "last_version_number", "mlflow_state", "created_at"]
    list_filter = ["task", "mlflow_state", "project"]
    search_fields = ["name", "description"]


class ModelFileInline(ReadOnlyInline):
    model = ModelFile
    fields = ["name", "role", "object_key", "source_key", "sha256", "size", "verified_at"]
    readonly_fields = fields


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "state", "source_job", "parameter_count", "created_by", "created_at"]
    list_filter = ["state", "model__project"]
    search_fields = ["model__name", "refused_reason"]
    list_select_related = ["model", "source_job", "created_by"]
    inlines = [ModelFileInline]


@admin.register(ModelAlias)
class ModelAliasAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "version", "previous_version", "moved_by", "moved_at"]
    list_select_related = ["model", "version__model", "previous_version__model", "moved_by"]
    search_fields = ["name", "model__name"]


@admin.register(ModelEvaluation)
class ModelEvaluationAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "version", "job", "created_at", "finished_at"]
    list_select_related = ["version__model", "job"]


@admin.register(RegistrySettings)
class RegistrySettingsAdmin(ReadOnlyAdmin):
    list_display = ["project", "protected_aliases", "updated_by", "updated_at"]


class PendingFilter(admin.SimpleListFilter):
    title = "pending"
    parameter_name = "pending"

    def lookups(self, request, model_admin):
        return [("yes", "Pending"), ("no", "Decided or withdrawn")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(state=PromotionState.PENDING)
        if self.value() == "no":
            return queryset.exclude(state=PromotionState.PENDING)
        return queryset


@admin.register(PromotionRequest)
class PromotionRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "model",
        "alias",
        "version",
        "is_rollback",
        "state",
        "requested_by",
        "requested_at",
        "decided_by",
    ]
    list_filter = [PendingFilter, "state", "model__project"]
    list_select_related = ["model__project", "version__model", "requested_by", "decided_by"]
    actions = ["approve", "reject"]

    @admin.action(description="Approve the selected pending requests")
    def approve(self, request, queryset):
        return self._decide(request, queryset, action="approve")

    @admin.action(description="Reject the selected pending requests")
    def reject(self, request, queryset):
        return self._decide(request, queryset, action="reject")

    def _decide(self, request, queryset, *, action: str):
        from controlplane.registry.services import promotion_approve, promotion_reject

        pending = list(
            queryset.filter(state=PromotionState.PENDING).select_related(
                "model__project", "version", "requested_by"
            )
        )
        return decide_with_reason(
            self,
            request,
            pending,
            action=action,
            decide=promotion_approve if action == "approve" else promotion_reject,
            errors=RegistryError,
            template="admin/registry/promotion_decide.html",
            title=f"{action.capitalize()} promotion requests",
        )
