"""Data-subject requests (GDPR Art. 15 access, Art. 17 erasure) and their identifiers.

A request is filed by a member, reviewed by a second one (an owner or compliance officer
who did not file it), and carried out by the erasure/access job, which moves it from
`approved` through `in_progress` to `completed` or `failed` and fills `progress` and
`certificate`. The subject's identifiers are stored encrypted (identifiers.py) next to
their keyed hash: lookups and the audit trail use the hash, only a reviewer's page or the
job ever decrypts.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class RequestKind(models.TextChoices):
    ERASURE = "erasure", "Erasure (Art. 17)"
    ACCESS = "access", "Access (Art. 15)"


class RequestScope(models.TextChoices):
    PROJECT = "project", "This project"
    # Every project of the organisation: on approval the request becomes the parent of one
    # project-scoped child per project (gdpr/organisation.py), which do the work.
    ORGANISATION = "organisation", "Every project of the organisation"


class RequestState(models.TextChoices):
    PENDING_REVIEW = "pending_review", "Pending review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


# States in which the controller still owes the subject an answer (the deadline runs).
OPEN_STATES = (RequestState.PENDING_REVIEW, RequestState.APPROVED, RequestState.IN_PROGRESS)


class SubjectRequest(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.PROTECT, related_name="subject_requests"
    )
    kind = models.CharField(max_length=16, choices=RequestKind.choices)
    scope = models.CharField(
        max_length=16, choices=RequestScope.choices, default=RequestScope.PROJECT
    )
    legal_basis = models.TextField()
    state = models.CharField(
        max_length=16, choices=RequestState.choices, default=RequestState.PENDING_REVIEW
    )
    filed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    filed_at = models.DateTimeField(auto_now_add=True)
    # When the controller received it (earlier than filed_at for a letter); the one-month
    # clock of Art. 12(3) starts here.
    received_at = models.DateTimeField()
    # received_at + 1 + extension_months calendar months (deadlines.py); stored so that
    # lists sort and filter overdue requests in SQL.
    deadline_at = models.DateTimeField()
    extension_months = models.PositiveSmallIntegerField(default=0)
    extension_reason = models.TextField(blank=True)
    extended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    extended_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_reason = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)
    # Written by the erasure/access job: {"steps": [...], "findings": [...]} as it goes,
    # and the deletion certificate (or the access export's summary) when it completes.
    progress = models.JSONField(default=dict, blank=True)
    certificate = models.JSONField(default=dict, blank=True)
    # The organisation-scoped request this one was fanned out from (one child per project
    # of the organisation); null for a request filed in its project.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["project", "state", "deadline_at"])]
        constraints = [
            # A fan-out repeated (a second pass, a crash half-way) finds its children.
            models.UniqueConstraint(
                fields=["parent", "project"], name="one_child_request_per_project"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} request #{self.pk}"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def is_parent(self) -> bool:
        """An organisation-wide request: its children do the work, it runs no job."""
        return self.scope == RequestScope.ORGANISATION


class SubjectIdentifier(models.Model):
    """One identifier of the subject (an e-mail, a customer id): its type in clear, its
    value as a Fernet token, and its keyed hash (HMAC with the project's subject key)."""

    request = models.ForeignKey(
        SubjectRequest, on_delete=models.CASCADE, related_name="identifiers"
    )
    position = models.PositiveSmallIntegerField()
    type = models.CharField(max_length=40)
    value_token = models.TextField()
    subject_hash = models.CharField(max_length=64, db_index=True)

    class Meta:
        ordering = ["request_id", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "subject_hash"], name="one_identifier_value_per_request"
            )
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.subject_hash[:12]}"


class ErasedDataFlag(models.Model):
    """A model version trained (transitively) on a dataset version that an erasure
    rewrote: "trained on erased data", with the request. What follows (warn, block
    serving, retrain) is the project's policy's call."""

    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.CASCADE, related_name="erased_data_flags"
    )
    request = models.ForeignKey(
        SubjectRequest, on_delete=models.PROTECT, related_name="model_flags"
    )
    # The erased dataset versions it was trained on: [{"id", "label"}].
    dataset_versions = models.JSONField(default=list)
    flagged_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-flagged_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "request"], name="one_erasure_flag_per_model_version"
            )
        ]

    def __str__(self) -> str:
        return f"model version {self.model_version_id} trained on data erased by #{self.request_id}"
