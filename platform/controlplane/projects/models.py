"""Projects are the tenant unit; a membership gives a user one role in one project."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ENGINEER = "engineer", "Engineer"
    VIEWER = "viewer", "Viewer"
    COMPLIANCE = "compliance", "Compliance officer"


slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{1,62}$", "use 2-63 lowercase letters, digits and hyphens"
)


class Project(models.Model):
    # The tenant wall: members of other organisations never see the project (orgs app).
    organisation = models.ForeignKey(
        "orgs.Organisation", on_delete=models.PROTECT, related_name="projects"
    )
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Which data-subject key the project hashes identifiers with now (controlplane.
    # subject_keys): the keys are derived from a secret outside the database, never stored.
    subject_key_generation = models.PositiveIntegerField(default=1, editable=False)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")
        ]
        ordering = ["project_id", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"
