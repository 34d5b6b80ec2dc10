"""Compliance policies: versioned rules per project (or the platform default), the waivers
compliance officers grant, the violations a scan finds, and erasure holds.

A project without a policy of its own follows its organisation's default, and an
organisation without one the platform default: platform -> organisation -> project. Staff
edit the platform default, an organisation's admins its default; the first edit of an
organisation's or a project's policy makes its own, starting from the one it followed. Every
change is a new immutable `PolicyVersion` (who, when, why, the diff); gates and scans
record the version they applied (`platform v3`, `project v2`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Policy(models.Model):
    # Both None: the platform default. At most one of them is set.
    project = models.OneToOneField(
        "projects.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="policy"
    )
    # An organisation's default, which its projects without a policy of their own follow.
    organisation = models.OneToOneField(
        "orgs.Organisation",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="policy",
    )
    # The number of the newest version; taken under this row's lock, never reused.
    current_number = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "organisation"],
                condition=models.Q(project__isnull=True, organisation__isnull=True),
                name="one_platform_default_policy",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=models.Q(project__isnull=True) | models.Q(organisation__isnull=True),
                name="policy_of_project_or_organisation",
            ),
        ]

    def __str__(self) -> str:
        if self.project_id is not None:
            return f"policy of {self.project}"
        if self.organisation_id is not None:
            return f"default policy of {self.organisation}"
        return "platform default policy"

    @property
    def scope(self) -> str:
        """What a decision's label names: 'project v2', 'org v3', 'platform v1'."""
        if self.project_id is not None:
            return "project"
        return "org" if self.organisation_id is not None else "platform"


class PolicyVersion(models.Model):
    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    # {rule key: {"enabled": bool, param: value, ...}} for every rule, defaults filled in.
    rules = models.JSONField()
    # {rule key: {param: {"before": ..., "after": ...}}}: what this version changed.
    diff = models.JSONField(default=dict)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["policy_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "number"], name="policy_version_number")
        ]

    def __str__(self) -> str:
        return f"{self.policy} v{self.number}"

    @property
    def label(self) -> str:
        return f"{self.policy.scope} v{self.number}"


class SubjectType(models.TextChoices):
    """What a waiver or a violation is about."""

    DATASET_VERSION = "dataset_version", "Dataset version"
    JOB = "job", "Job"
    MODEL_VERSION = "model_version", "Model version"
    DEPLOYMENT = "deployment", "Deployment"
    # Only as the subject of a decision (a project setting); nothing waives a project.
    PROJECT = "project", "Project"


class Waiver(models.Model):
    """One rule does not apply to one subject until `expires_at` (or until revoked)."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    rule = models.CharField(max_length=40)
    subject_type = models.CharField(max_length=20, choices=SubjectType.choices)
    subject_id = models.BigIntegerField()
    subject_label = models.CharField(max_length=300)
    reason = models.TextField()
    expires_at = models.DateTimeField()
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    granted_at = models.DateTimeField(auto_now_add=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-granted_at", "-id"]
        indexes = [models.Index(fields=["subject_type", "subject_id", "rule"])]

    def __str__(self) -> str:
        return f"waiver of {self.rule} for {self.subject_label}"


class ViolationState(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"


class Violation(models.Model):
    """Something that exists and that the current policy would refuse (found by a scan or
    by a gate that could not refuse, such as a dataset version becoming ready)."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="violations"
    )
    rule = models.CharField(max_length=40)
    subject_type = models.CharField(max_length=20, choices=SubjectType.choices)
    subject_id = models.BigIntegerField()
    subject_label = models.CharField(max_length=300)
    reason = models.TextField()
    fix = models.TextField(blank=True)
    policy_version = models.CharField(max_length=40)  # "project v3" at the last finding
    state = models.CharField(
        max_length=10, choices=ViolationState.choices, default=ViolationState.OPEN
    )
    found_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    # None with resolved_at set: resolved by a scan (the subject no longer violates).
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution = models.TextField(blank=True)

    class Meta:
        ordering = ["-found_at", "-id"]
        constraints = [
            # At most one open violation per (rule, subject): a scan updates it.
            models.UniqueConstraint(
                fields=["rule", "subject_type", "subject_id"],
                condition=models.Q(state="open"),
                name="one_open_violation_per_rule_subject",
            )
        ]
        indexes = [models.Index(fields=["project", "state", "rule"])]

    def __str__(self) -> str:
        return f"{self.rule} violation by {self.subject_label}"


class ViolationComment(models.Model):
    violation = models.ForeignKey(Violation, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"comment by {self.author_id} on violation {self.violation_id}"


class ErasureHold(models.Model):
    """An approved erasure that has not finished: no training on the dataset version (or
    anything derived from it), no promotion of models trained on it, until released."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    dataset_version = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.CASCADE, related_name="erasure_holds"
    )
    reference = models.CharField(max_length=200)  # the erasure request (ticket, request id)
    reason = models.TextField(blank=True)
    placed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    placed_at = models.DateTimeField(auto_now_add=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-placed_at", "-id"]

    def __str__(self) -> str:
        return f"erasure hold {self.reference} on {self.dataset_version_id}"


class ScanState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class PolicyScan(models.Model):
    """One run of the violation scan (a project's, or every project's when project is None)."""

    project = models.ForeignKey(
        "projects.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    state = models.CharField(max_length=10, choices=ScanState.choices, default=ScanState.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # {"dataset_versions": n, "model_versions": n, "deployments": n, "jobs": n,
    #  "opened": n, "still_open": n, "resolved": n, "seconds": s}
    counts = models.JSONField(default=dict)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"policy scan {self.pk} ({self.state})"
