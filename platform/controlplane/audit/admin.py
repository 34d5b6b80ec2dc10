"""The audit log in the admin: append-only (the database refuses changes), so only read."""

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin
from controlplane.audit.models import AuditAnchor, AuditChain, AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "project_id",
        "seq",
        "action",
        "artifact_type",
        "artifact_id",
        "actor_id",
        "created_at",
        "short_hash",
    ]
    list_filter = ["action", "artifact_type"]
    search_fields = ["artifact_id", "hash", "action"]

    @admin.display(description="hash")
    def short_hash(self, event):
        return event.hash[:12]


@admin.register(AuditChain)
class AuditChainAdmin(ReadOnlyAdmin):
    list_display = ["scope", "project", "length", "head_hash"]


@admin.register(AuditAnchor)
class AuditAnchorAdmin(ReadOnlyAdmin):
    """The index of anchors written; the signed documents themselves are in the store."""

    list_display = ["chain", "length", "head_hash", "anchored_at", "object_key"]
