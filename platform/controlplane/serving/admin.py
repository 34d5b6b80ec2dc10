"""Serving in the Django admin: read-only. Deployments change through their services
(audited), replicas and nodes through the scheduler."""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin
from controlplane.serving.models import Deployment, Replica, ServeNode


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "project",
        "model",
        "follows",
        "state",
        "replicas",
        "device",
        "archive_requests",
    ]
    list_filter = ["state", "device", "archive_requests", "project"]
    search_fields = ["name", "alias", "reason"]
    list_select_related = ["project", "model", "pinned_version"]


@admin.register(Replica)
class ReplicaAdmin(ReadOnlyAdmin):
    list_display = ["id", "deployment", "version", "node", "state", "restarts", "created_at"]
    list_filter = ["state"]
    search_fields = ["id", "error"]
    list_select_related = ["deployment", "version__model", "node"]


@admin.register(ServeNode)
class ServeNodeAdmin(ReadOnlyAdmin):
    list_display = ["name", "url", "device", "capacity", "last_seen", "first_seen"]
    list_filter = ["device"]
    search_fields = ["name", "url"]
