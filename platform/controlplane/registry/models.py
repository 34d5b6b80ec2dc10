"""The model registry: named models, their immutable versions, aliases and promotions.

A version is registered from a succeeded training job. Its files are copied server-side
from the job's outputs into the version's own prefix, then each copy is read back and
its sha256 checked against what the worker reported, off the web process (a control
task); only then is the version `ready`:

    registering --files copied and verified--> ready --delete--> deleted (a tombstone)
         |
         +--a sha256 or size that does not match--> refused (copies removed, audited)

Aliases (`candidate`, `production`, ...) point at one ready version each. Moving a
protected alias (per project, `production` by default) goes through a
PromotionRequest: a passing evaluation of the target version, then the approval of a
second member with the owner or compliance role.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

# URL- and MLflow-safe: a model is addressed by name in the API (`/models/<name>/`) and
# mirrored under the same name in MLflow's registry.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
model_name_validator = RegexValidator(
    MODEL_NAME_PATTERN,
    "a model name is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
)
# MLflow refuses `latest` and `v<digits>` as aliases (they name versions); so do we.
ALIAS_PATTERN = r"^(?!latest$)(?!v\d+$)[a-z][a-z0-9_-]{0,63}$"
alias_validator = RegexValidator(
    ALIAS_PATTERN,
    "an alias is 1-64 lower-case letters, digits, '_' or '-', starting with a letter "
    "(not 'latest' nor 'v<number>')",
)
DEFAULT_PROTECTED_ALIASES = ["production"]


class ModelTask(models.TextChoices):
    TEXT_GENERATION = "text-generation", "Text generation"
    IMAGE_GENERATION = "image-generation", "Image generation"


class SyncState(models.TextChoices):
    PENDING = "pending", "Pending"
    SYNCED = "synced", "Synced"
    FAILED = "failed", "Failed (retrying)"


class RegistrySettings(models.Model):
    """A project's registry settings: which aliases need a promotion request."""

    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="registry_settings"
    )
    protected_aliases = models.JSONField(default=list)  # alias names; see DEFAULT_PROTECTED_ALIASES
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"registry settings of {self.project}"


class RegisteredModel(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.PROTECT, related_name="registered_models"
    )
    name = models.CharField(max_length=100, validators=[model_name_validator])
    task = models.CharField(max_length=30, choices=ModelTask.choices)
    description = models.TextField(blank=True)
    # Promotion gates of this model: [{"metric": "val_loss", "op": "<=", "value": 2.0}, ...]
    # (op one of <=, <, >=, >), checked against the target version's latest evaluation.
    promotion_thresholds = models.JSONField(default=list)
    # The highest version number ever given out: numbers are never reused.
    last_version_number = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # MLflow registry mirror: every change sets PENDING; the control worker reconciles
    # MLflow with this model (versions, aliases, tags) and records the outcome.
    mlflow_state = models.CharField(
        max_length=10, choices=SyncState.choices, default=SyncState.PENDING
    )
    mlflow_error = models.TextField(blank=True)
    mlflow_synced_at = models.DateTimeField(null=True, blank=True)
    mlflow_attempts = models.PositiveIntegerField(default=0)
    mlflow_next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="model_name_per_project")
        ]
        indexes = [models.Index(fields=["mlflow_state", "mlflow_next_attempt_at"])]

    def __str__(self) -> str:
        return self.name


class VersionState(models.TextChoices):
    REGISTERING = "registering", "Registering"
    READY = "ready", "Ready"
    REFUSED = "refused", "Refused"
    DELETED = "deleted", "Deleted"


class ModelVersion(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(
        max_length=12, choices=VersionState.choices, default=VersionState.REGISTERING
    )
    source_job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, related_name="+")
    source_attempt = models.PositiveIntegerField()
    # The registered version of the source job's base job, when there is one.
    base_version = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="derived_versions"
    )
    # Lineage, transitively: every job of the chain (source, its base job, the base's
    # base, the reward job...) and every dataset version under them (with their parents).
    lineage_jobs = models.ManyToManyField("jobs.Job", related_name="+", blank=True)
    dataset_versions = models.ManyToManyField(
        "datasets.DatasetVersion", related_name="model_versions", blank=True
    )
    # The lineage graph as registered (nodes and edges), for the card and the page.
    lineage = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)  # the source job's final figures
    params = models.JSONField(default=dict)  # the source job's filled params (training settings)
    # From the files at verification: config summary, parameter count, dtype.
    architecture = models.JSONField(default=dict)
    parameter_count = models.PositiveBigIntegerField(null=True, blank=True)
    description = models.TextField(blank=True)
    intended_use = models.TextField(blank=True)  # editable: the model card's intended use
    limitations = models.TextField(blank=True)  # editable: known limits
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    refused_reason = models.TextField(blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    mlflow_version = models.CharField(max_length=20, blank=True)  # its number in MLflow

    class Meta:
        ordering = ["model_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="version_number_per_model")
        ]
        indexes = [
            models.Index(fields=["model", "state"]),
            models.Index(fields=["source_job"]),
            models.Index(fields=["state", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    @property
    def object_prefix(self) -> str:
        model = self.model
        return f"projects/{model.project_id}/models/{model.pk}/versions/{self.number}/"


class FileRole(models.TextChoices):
    WEIGHTS = "weights", "Weights"  # model.safetensors
    CONFIG = "config", "Config"  # config.json (HF style)
    TOKENIZER = "tokenizer", "Tokenizer"  # tokenizer.json
    CHECKPOINT = "checkpoint", "Checkpoint"  # a vision checkpoint (.pt)
    OTHER = "other", "Other"


class ModelFile(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=255)  # "model.safetensors": the name in an export
    role = models.CharField(max_length=12, choices=FileRole.choices, default=FileRole.OTHER)
    source_key = models.CharField(max_length=512)  # the job artifact it was copied from
    object_key = models.CharField(max_length=512, unique=True)  # the version's own copy
    sha256 = models.CharField(max_length=64)  # as the worker reported it
    size = models.PositiveBigIntegerField()
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["version_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["version", "name"], name="model_file_name_per_version")
        ]

    def __str__(self) -> str:
        return f"{self.name} of {self.version_id}"


class ModelAlias(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64, validators=[alias_validator])
    # PROTECT: a version an alias points at cannot be deleted (the service says 409 first).
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    previous_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    moved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    moved_at = models.DateTimeField()

    class Meta:
        ordering = ["model_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="alias_name_per_model")
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"


class PromotionState(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"  # by its requester, or replaced by a newer request


class PromotionRequest(models.Model):
    """A request to move a protected alias: four eyes, the requester never approves."""

    model = models.ForeignKey(
        RegisteredModel, on_delete=models.CASCADE, related_name="promotion_requests"
    )
    alias = models.CharField(max_length=64, validators=[alias_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    # Where the alias pointed when the request was made (None: it did not exist).
    from_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    is_rollback = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    # The evaluation whose figures passed the thresholds when the request was made.
    evaluation = models.ForeignKey(
        "registry.ModelEvaluation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    state = models.CharField(
        max_length=10, choices=PromotionState.choices, default=PromotionState.PENDING
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            # One open request per alias: a second one withdraws the first (services).
            models.UniqueConstraint(
                fields=["model", "alias"],
                condition=models.Q(state="pending"),
                name="one_pending_promotion_per_alias",
            )
        ]
        indexes = [models.Index(fields=["state", "-requested_at"])]

    def __str__(self) -> str:
        return f"promote {self.model.name} v{self.version.number} to @{self.alias} ({self.state})"


class ModelEvaluation(models.Model):
    """An `evaluate` job of one version, and its figures once the job succeeded."""

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="evaluations")
    job = models.OneToOneField(
        "jobs.Job", on_delete=models.PROTECT, related_name="model_evaluation"
    )
    # Flat figures the thresholds are checked against ({"val_loss": 1.9, "perplexity": 6.7,
    # "toxicity_share": 0.0, "memorisation_share": 0.01, "recognition": 0.93, ...}).
    metrics = models.JSONField(default=dict)
    details = models.JSONField(default=dict)  # samples, per-class figures, settings used
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)  # set when the job succeeded

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["version", "-finished_at"])]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.version_id} (job {self.job_id})"
