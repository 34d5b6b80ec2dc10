"""Data-subject requests in the Django admin: read-only, except deciding pending ones.

Approve and reject go through the same services and rules as the pages and the API: the
admin user needs the owner or compliance role in the request's project (for an
organisation-scoped request: the admin role in its organisation), a membership: being a
superuser is not enough, and cannot decide a request they filed; refusals are
admin messages. Identifiers are never shown in clear here: the list shows their types
and the first characters of their keyed hashes.
"""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin, decide_with_reason
from controlplane.gdpr.errors import GdprError
from controlplane.gdpr.models import RequestState, SubjectRequest


@admin.register(SubjectRequest)
class SubjectRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "scope",
        "state",
        "subject",
        "filed_by",
        "received_at",
        "deadline_at",
        "reviewed_by",
    ]
    list_filter = ["state", "kind", "scope", "project"]
    list_select_related = ["project", "filed_by", "reviewed_by"]
    # No identifier values (not even their tokens): the hashes say which subject it is.
    fields = [
        "project",
        "kind",
        "scope",
        "parent",
        "state",
        "subject",
        "legal_basis",
        "filed_by",
        "filed_at",
        "received_at",
        "deadline_at",
        "extension_months",
        "extension_reason",
        "reviewed_by",
        "reviewed_at",
        "review_reason",
        "started_at",
        "finished_at",
        "failure_reason",
        "progress",
        "certificate",
    ]
    readonly_fields = fields
    actions = ["approve", "reject"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("identifiers")

    @admin.display(description="subject (keyed hashes)")
    def subject(self, obj: SubjectRequest) -> str:
        return ", ".join(f"{i.type} #{i.subject_hash[:12]}" for i in obj.identifiers.all())

    @admin.action(description="Approve the selected pending requests")
    def approve(self, request, queryset):
        return self._decide(request, queryset, action="approve")

    @admin.action(description="Reject the selected pending requests")
    def reject(self, request, queryset):
        return self._decide(request, queryset, action="reject")

    def _decide(self, request, queryset, *, action: str):
        from controlplane.gdpr.services import request_approve, request_reject

        pending = list(
            queryset.filter(state=RequestState.PENDING_REVIEW)
            .select_related("project__organisation", "filed_by")
            .prefetch_related("identifiers")
        )
        return decide_with_reason(
            self,
            request,
            pending,
            action=action,
            decide=request_approve if action == "approve" else request_reject,
            errors=GdprError,
            template="admin/gdpr/subjectrequest_decide.html",
            title=f"{action.capitalize()} data-subject requests",
        )
