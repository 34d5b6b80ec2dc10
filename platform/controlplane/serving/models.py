"""Serving: deployments of registered model versions, their replicas on serve nodes, and
the index of the inference archive.

A deployment serves one version, or follows an alias (`@production`): when the alias
moves, the scheduler starts replicas of the new version, routes traffic to them once they
are ready, then drains the old ones (no request in flight is dropped). Serve nodes
(`python -m workers.serve`) hold no database credentials; they report to the platform
every second (`POST /internal/serve/sync`) and get back what to run.

Every request and response is archived by the replica that served it: JSONL objects in
the store (one gzip member per record, one object per replica per window), indexed here
one row per request (`InferenceRecord`), so that one record is read with one ranged GET.
A deployment created with `archive_requests=False` records nothing: its replicas write no
object and send no index.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from workers.serve.protocol import Endpoint, RecordStatus, ReplicaState

DEPLOYMENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
deployment_name_validator = RegexValidator(
    DEPLOYMENT_NAME_PATTERN,
    "a deployment name is 1-63 lower-case letters, digits or '-', starting with a letter or digit",
)
# Retention of the inference archive when a project has not set one.
DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650


def new_replica_id() -> str:
    return uuid.uuid4().hex


class DeploymentState(models.TextChoices):
    RUNNING = "running", "Running"  # wanted up: the scheduler keeps `replicas` ready replicas
    STOPPED = "stopped", "Stopped"  # replicas drained and gone; requests answer 503
    FAILED = "failed", "Failed"  # its replicas could not load; `reason` says why


class Device(models.TextChoices):
    CPU = "cpu", "CPU"
    CUDA = "cuda", "CUDA GPU"


class Deployment(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="deployments"
    )
    name = models.CharField(max_length=63, validators=[deployment_name_validator])
    model = models.ForeignKey(
        "registry.RegisteredModel", on_delete=models.PROTECT, related_name="deployments"
    )
    # Exactly one of: a fixed version, or an alias of the model the deployment follows.
    pinned_version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    alias = models.CharField(max_length=64, blank=True)
    # The version the deployment should serve now (the pinned one, or where the alias
    # points); replicas of other versions are drained once enough of these are ready.
    target_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="+"
    )
    replicas = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(16)]
    )
    device = models.CharField(max_length=8, choices=Device.choices, default=Device.CPU)
    max_batch = models.PositiveSmallIntegerField(
        default=16, validators=[MinValueValidator(1), MaxValueValidator(256)]
    )
    max_queue = models.PositiveSmallIntegerField(
        default=64, validators=[MinValueValidator(1), MaxValueValidator(4096)]
    )
    # GuardrailConfig as a dict (workers/serve/protocol.py); defaults from the training
    # data's pipeline configuration when the deployment is created.
    guardrails = models.JSONField(default=dict)
    rate_limit_per_minute = models.PositiveIntegerField(
        default=600, validators=[MinValueValidator(1), MaxValueValidator(1_000_000)]
    )
    # Off: its replicas keep no record of requests and answers (no archive objects, no
    # InferenceRecord rows, so no usage charts either). A policy rule can demand it on.
    archive_requests = models.BooleanField(default=True)
    state = models.CharField(
        max_length=10, choices=DeploymentState.choices, default=DeploymentState.RUNNING
    )
    reason = models.TextField(blank=True)  # why stopped or failed
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="deployment_name_unique"),
            models.CheckConstraint(
                condition=(
                    models.Q(pinned_version__isnull=False, alias="")
                    | models.Q(pinned_version__isnull=True) & ~models.Q(alias="")
                ),
                name="deployment_version_or_alias",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project_id}/{self.name}"

    @property
    def follows(self) -> str:
        """What the deployment serves, as a user writes it: "@production" or "v3"."""
        if self.alias:
            return f"@{self.alias}"
        return f"v{self.pinned_version.number}" if self.pinned_version_id else ""


class ServeNode(models.Model):
    """A serve worker process, as it last reported itself."""

    name = models.CharField(max_length=200, unique=True)
    url = models.CharField(max_length=500)  # its front's base URL
    device = models.CharField(max_length=8, choices=Device.choices, default=Device.CPU)
    capacity = models.PositiveSmallIntegerField(default=1)
    started_at = models.FloatField(default=0.0)  # the node process's start (unix time)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Replica(models.Model):
    """One copy of a deployment's model on one node. Rows are kept after a replica stops
    (history on the deployment page); the scheduler only looks at live ones."""

    id = models.CharField(max_length=32, primary_key=True, default=new_replica_id)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="+")
    node = models.ForeignKey(
        ServeNode, null=True, on_delete=models.SET_NULL, related_name="replicas"
    )
    state = models.CharField(
        max_length=10,
        choices=[(s.value, s.value) for s in ReplicaState],
        default=ReplicaState.PENDING.value,
    )
    pid = models.IntegerField(null=True, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    health = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    last_report = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment_id", "created_at"]
        indexes = [models.Index(fields=["deployment", "state"])]

    def __str__(self) -> str:
        return f"{self.deployment_id}:{self.id[:8]}"


class ServingSettings(models.Model):
    """Per-project serving settings (the archive's retention)."""

    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="serving_settings"
    )
    retention_days = models.PositiveIntegerField(
        default=DEFAULT_RETENTION_DAYS,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_RETENTION_DAYS)],
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"serving settings of project {self.project_id}"


class ArchiveObject(models.Model):
    """One archive window object a replica wrote (JSONL, one gzip member per record)."""

    object_key = models.CharField(max_length=512, unique=True)
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="archive_objects"
    )
    replica_id = models.CharField(max_length=32)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField(db_index=True)
    size = models.PositiveBigIntegerField()
    records = models.PositiveIntegerField()
    indexed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["window_start"]

    def __str__(self) -> str:
        return self.object_key


class InferenceRecord(models.Model):
    """The index row of one archived request; the record itself is in `archive_object`
    at [offset, offset + length)."""

    request_id = models.CharField(max_length=32, unique=True)
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="records")
    version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="+")
    archive_object = models.ForeignKey(
        ArchiveObject, on_delete=models.CASCADE, related_name="entries"
    )
    offset = models.PositiveBigIntegerField()
    length = models.PositiveIntegerField()
    created_at = models.DateTimeField()  # when the request arrived
    endpoint = models.CharField(max_length=24, choices=[(e.value, e.value) for e in Endpoint])
    status = models.CharField(max_length=10, choices=[(s.value, s.value) for s in RecordStatus])
    token_id = models.IntegerField(null=True, blank=True)  # no FK: tokens may be deleted
    user_id = models.IntegerField(null=True, blank=True)
    subject_hash = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField(default=0.0)
    first_token_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["deployment", "-created_at"]),
            models.Index(fields=["project", "subject_hash"]),
            models.Index(fields=["deployment", "status", "-created_at"]),
        ]

    def __str__(self) -> str:
        return self.request_id
