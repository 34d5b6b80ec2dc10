"""Data-subject requests in the Django admin: read-only, except deciding pending ones.

Approve and reject go through the same services and rules as the pages and the API: the
admin user needs the owner or compliance role in the request's project (a membership:
being a superuser is not enough) and cannot decide a request they filed; refusals are
admin messages. Identifiers are never shown in clear here: the list shows their types
and the first characters of their keyed hashes.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.template.response import TemplateResponse

from controlplane.admin_readonly import ReadOnlyAdmin
from controlplane.gdpr.errors import GdprError
from controlplane.gdpr.models import RequestState, SubjectRequest


@admin.register(SubjectRequest)
class SubjectRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "state",
        "subject",
        "filed_by",
        "received_at",
        "deadline_at",
        "reviewed_by",
    ]
    list_filter = ["state", "kind", "project"]
    list_select_related = ["project", "filed_by", "reviewed_by"]
    # No identifier values (not even their tokens): the hashes say which subject it is.
    fields = [
        "project",
        "kind",
        "scope",
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

        decide = request_approve if action == "approve" else request_reject
        pending = list(
            queryset.filter(state=RequestState.PENDING_REVIEW)
            .select_related("project", "filed_by")
            .prefetch_related("identifiers")
        )
        if not pending:
            self.message_user(request, "none of the selected requests is pending", messages.WARNING)
            return None
        reason = request.POST.get("reason", "").strip()
        if request.POST.get("confirm") != "yes" or not reason:
            return TemplateResponse(
                request,
                "admin/gdpr/subjectrequest_decide.html",
                {
                    **self.admin_site.each_context(request),
                    "title": f"{action.capitalize()} data-subject requests",
                    "opts": self.model._meta,
                    "requests": pending,
                    "action": action,
                    "verb": action,
                    "reason": reason,
                    "error": "give a reason" if request.POST.get("confirm") == "yes" else "",
                },
            )
        done = 0
        for subject_request in pending:
            try:
                decide(request=subject_request, actor=request.user, reason=reason)
                done += 1
            except GdprError as error:
                self.message_user(
                    request, f"request #{subject_request.pk}: {error}", messages.ERROR
                )
        if done:
            past = "approved" if action == "approve" else "rejected"
            self.message_user(request, f"{done} request(s) {past}", messages.SUCCESS)
        return None
