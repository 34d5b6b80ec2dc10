"""Organisations: the tenant above projects (SaaS-style).

A user belongs to any number of organisations, with one role in each; projects belong to
exactly one. A project member must be a member of the project's organisation: the
organisation is the outer wall (another organisation's objects answer 404, whatever the
project role), the project role decides what a member may do inside.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from controlplane.projects.models import slug_validator

DEFAULT_ORG_SLUG = "default"  # where projects made before organisations existed live


class OrgRole(models.TextChoices):
    # Manages members, projects, the rate card, budgets, quotas, webhooks and the org's
    # policy defaults; sees every project's figures (not its data) on the overview.
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Organisation(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    # GitHub-style: whether members (not only admins) may create projects in the org.
    members_create_projects = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class OrgMembership(models.Model):
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="org_memberships"
    )
    role = models.CharField(max_length=10, choices=OrgRole.choices, default=OrgRole.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "user"], name="one_org_membership_per_user"
            )
        ]
        ordering = ["organisation_id", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.organisation}"
