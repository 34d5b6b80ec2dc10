"""Read-only Django admin classes, shared by the apps whose rows change only through
their services (audited, locked, checked): the admin shows those rows and nothing more."""

from __future__ import annotations

from django.contrib import admin


class ReadOnlyMixin:
    """No add, change or delete: staff can only view."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    pass


class ReadOnlyInline(ReadOnlyMixin, admin.TabularInline):
    """Rows shown, none added, edited or removed (name their `fields` as `readonly_fields`)."""

    extra = 0
    can_delete = False


def decide_with_reason(
    model_admin: admin.ModelAdmin,
    request,
    pending: list,
    *,
    action: str,
    decide,
    errors: type[Exception],
    template: str,
    title: str,
):
    """An admin action that approves or rejects requests through their service: first a
    page asking for the reason (the services need one), then `decide(request=row,
    actor=user, reason=...)` per row, each refusal (four-eyes, role, state) a message."""
    from django.contrib import messages
    from django.template.response import TemplateResponse

    if not pending:
        model_admin.message_user(
            request, "none of the selected requests is pending", messages.WARNING
        )
        return None
    reason = request.POST.get("reason", "").strip()
    if request.POST.get("confirm") != "yes" or not reason:
        return TemplateResponse(
            request,
            template,
            {
                **model_admin.admin_site.each_context(request),
                "title": title,
                "opts": model_admin.model._meta,
                "requests": pending,
                "action": action,
                "verb": action,
                "reason": reason,
                "error": "give a reason" if request.POST.get("confirm") == "yes" else "",
            },
        )
    done = 0
    for row in pending:
        try:
            decide(request=row, actor=request.user, reason=reason)
            done += 1
        except errors as error:
            model_admin.message_user(request, f"request #{row.pk}: {error}", messages.ERROR)
    if done:
        past = "approved" if action == "approve" else "rejected"
        model_admin.message_user(request, f"{done} request(s) {past}", messages.SUCCESS)
    return None
