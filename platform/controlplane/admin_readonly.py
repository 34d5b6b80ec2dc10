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
