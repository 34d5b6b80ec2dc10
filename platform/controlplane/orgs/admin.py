"""Organisations in the Django admin: read-only. Members, roles and settings change only
through orgs.services (audited on the platform chain; the last admin stays)."""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin, ReadOnlyInline
from controlplane.orgs.models import Organisation, OrgMembership


class OrgMembershipInline(ReadOnlyInline):
    model = OrgMembership
    fields = readonly_fields = ["user", "role", "created_at"]


@admin.register(Organisation)
class OrganisationAdmin(ReadOnlyAdmin):
    list_display = ["name", "slug", "members_create_projects", "created_by", "created_at"]
    search_fields = ["name", "slug"]
    inlines = [OrgMembershipInline]


@admin.register(OrgMembership)
class OrgMembershipAdmin(ReadOnlyAdmin):
    list_display = ["organisation", "user", "role", "created_at"]
    list_filter = ["role", "organisation"]
    search_fields = ["user__username", "organisation__name"]
