"""FinOps in the Django admin: read-only. Rates, budgets, quotas and the webhook change
through their services (audited); usage rows are measured, alerts and deliveries derived."""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin
from controlplane.finops.models import (
    Budget,
    BudgetAlert,
    OrgWebhook,
    ProjectQuota,
    RateCard,
    ServingUsage,
    StorageSnapshot,
    WebhookDelivery,
)


@admin.register(RateCard)
class RateCardAdmin(ReadOnlyAdmin):
    list_display = ["organisation", "version", "currency", "effective_from", "created_by"]
    list_filter = ["organisation"]


@admin.register(StorageSnapshot)
class StorageSnapshotAdmin(ReadOnlyAdmin):
    list_display = ["project", "day", "kind", "bytes", "object_count", "cost"]
    list_filter = ["kind", "day"]
    list_select_related = ["project"]


@admin.register(ServingUsage)
class ServingUsageAdmin(ReadOnlyAdmin):
    list_display = ["deployment", "project", "hour", "requests", "tokens_in", "tokens_out", "cost"]
    list_select_related = ["deployment", "project"]


@admin.register(Budget)
class BudgetAdmin(ReadOnlyAdmin):
    list_display = ["project", "month", "amount", "recurring", "hard_stop", "updated_by"]
    list_select_related = ["project", "updated_by"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["project", "month", "threshold", "spent", "amount", "created_at"]
    list_select_related = ["project"]


@admin.register(ProjectQuota)
class ProjectQuotaAdmin(ReadOnlyAdmin):
    list_display = ["project", "max_concurrent_gpu_jobs", "max_gpus", "updated_by"]
    list_select_related = ["project", "updated_by"]


@admin.register(OrgWebhook)
class OrgWebhookAdmin(ReadOnlyAdmin):
    list_display = ["organisation", "url", "enabled", "last_success_at", "last_failure_at"]
    exclude = ["secret"]  # never shown, not even to staff


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["organisation", "event", "state", "attempts", "response_status", "created_at"]
    list_filter = ["state", "event"]
