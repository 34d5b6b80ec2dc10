"""Datasets and their immutable versions.

A version is created empty in state `uploading`, its files arrive in the object store
(presigned multipart upload from the browser or an API client, or written by a pipeline
job), and it becomes `ready` only when every file's size and sha256 have been checked.
A version that never completes is removed with its bytes: nothing half-written remains.

States (each transition is a conditional UPDATE claimed by exactly one request or task):

    uploading --complete--> assembling --verified--> ready
        |                       |
        +---abort / reaper------+--mismatch / lease ran out--> removing --> (row deleted)

A version number is taken from `Dataset.last_version_number`, which only grows: a removed
version's number is never given to another version.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class DatasetKind(models.TextChoices):
    TEXT = "text", "Text"
    IMAGES = "images", "Images"


class Dataset(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.PROTECT, related_name="datasets"
    )
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=63)
    kind = models.CharField(max_length=10, choices=DatasetKind.choices)
    description = models.TextField(blank=True)
    source = models.CharField(max_length=500, blank=True)  # where the data came from (URL, system)
    license = models.CharField(max_length=120, blank=True)
    # The record field naming the data subject, when the data holds personal data: the
    # pipeline (for its outputs) and the control worker (for raw uploads,
    # datasets/subject_index.py) build a subject index from it so an erasure request
    # finds every record.
    subject_field = models.CharField(max_length=120, blank=True)
    # The highest version number ever given out (removed versions included): numbers are
    # taken from here under the dataset's row lock and never reused.
    last_version_number = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "slug"], name="dataset_slug_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class VersionState(models.TextChoices):
    UPLOADING = "uploading", "Uploading"
    # One `complete` request claimed the version and is assembling and checking its files.
    ASSEMBLING = "assembling", "Assembling"
    # Being removed (aborted, failed its checks, abandoned): objects first, then the row.
    REMOVING = "removing", "Removing"
    READY = "ready", "Ready"
    ERASED = "erased", "Erased"


class DatasetVersion(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(
        max_length=12, choices=VersionState.choices, default=VersionState.UPLOADING
    )
    # Lineage: uploaded (no job) or derived by a job from other versions.
    produced_by = models.ForeignKey(
        "jobs.Job",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="produced_versions",
    )
    parents = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="children")
    byte_count = models.PositiveBigIntegerField(default=0)
    record_count = models.PositiveBigIntegerField(null=True, blank=True)
    note = models.CharField(max_length=300, blank=True)
    # What a pipeline run reported (counts per stage and reason, examples) and the first
    # records after cleaning: shown on the version page.
    report = models.JSONField(null=True, blank=True)
    preview = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # Deadline of the transient state (uploading, assembling, removing): past it the
    # reaper takes the version over and removes it. None once the version is ready.
    upload_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # sha256 of the `complete` request that made the version ready: the same request sent
    # again (a client retrying after a timeout) gets the same answer instead of a conflict.
    completion_digest = models.CharField(max_length=64, blank=True)
    # Why a version in state `removing` is being removed (for the audit event).
    removal_reason = models.CharField(max_length=300, blank=True)
    # Where its objects are stored (the store's `location()` when the version was made):
    # what a data-residency rule checks. Blank on versions made before it was recorded.
    # S3 bucket names have at most 63 characters; the local store's folder name may be
    # a key part of up to 200 (workers/storage/keys.py).
    storage_bucket = models.CharField(max_length=255, blank=True)
    storage_region = models.CharField(max_length=100, blank=True)
    # State `erased`: the version's objects were deleted (every stored version) by a data
    # subject's erasure; the row stays so that lineage and the audit trail remain whole.
    erased_at = models.DateTimeField(null=True, blank=True)
    erased_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    erasure_request = models.ForeignKey(
        "gdpr.SubjectRequest",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="erased_versions",
    )

    class Meta:
        ordering = ["dataset_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="version_number_per_dataset")
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name} v{self.number} ({self.state})"

    @property
    def prefix(self) -> str:
        return f"projects/{self.dataset.project_id}/datasets/{self.dataset_id}/v{self.number}/"


class FileRole(models.TextChoices):
    """What a file of a version is for; set from its name (datasets/services.py)."""

    DATA = "data", "Data"  # records a job reads (JSON lines)
    SHARD = "shard", "Token shard"  # tokens/*.bin, what pre-training reads
    TOKENIZER = "tokenizer", "Tokenizer"
    REPORT = "report", "Pipeline report"
    INDEX = "index", "Data-subject index"
    MANIFEST = "manifest", "Manifest"
    OTHER = "other", "Other"


class DatasetFile(models.Model):
    """One object of a version; its manifest is the list of these."""

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="files")
    # The user's file name (display) or the pipeline's output path inside the version.
    name = models.CharField(max_length=255)
    # One of FileRole; not declared as the field's choices, which would only add a migration.
    role = models.CharField(max_length=40, default=FileRole.DATA)
    object_key = models.CharField(max_length=512, unique=True)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    record_count = models.PositiveBigIntegerField(null=True, blank=True)
    # Set while a multipart upload is open; cleared when the object is complete and checked.
    upload_id = models.CharField(max_length=300, blank=True)
    part_size = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["version_id", "name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["version", "name"], name="file_name_per_version")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes)"
