"""Projects and memberships change through their services (audited, in the project's chain:
the pages and the API): the admin shows them. A project added here would have no audit
chain and no organisation check; a membership added here would grant a role unaudited."""

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin, ReadOnlyInline
from controlplane.projects.models import Membership, Project


class MembershipInline(ReadOnlyInline):
    model = Membership
    fields = readonly_fields = ["user", "role", "created_at"]


@admin.register(Project)
class ProjectAdmin(ReadOnlyAdmin):
    list_display = ["name", "slug", "organisation", "created_by", "created_at"]
    list_filter = ["organisation"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ["project", "user", "role", "created_at"]
    list_filter = ["role", "project"]
    search_fields = ["user__username", "project__name"]
