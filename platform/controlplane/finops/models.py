"""What the platform measured and what it cost: usage per job attempt, storage per day,
serving per hour; the organisation's versioned rate card; budgets, alerts, quotas and the
organisation's notification webhook.

Money is a Decimal in the rate card's currency. Every usage row stores its cost at the
rate card version in force when the usage happened (``rate_card``), so a later change of
rates never rewrites the past and a month's spend is a SUM over three tables.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

MONEY = {"max_digits": 16, "decimal_places": 6}


class StorageKind(models.TextChoices):
    RAW = "raw", "Raw data"
    DERIVED = "derived", "Derived data"
    CHECKPOINTS = "checkpoints", "Checkpoints"
    MODELS = "models", "Models"
    ARCHIVE = "archive", "Inference archive"


class RateCard(models.Model):
    """One immutable version of an organisation's rates; the newest whose ``effective_from``
    is not after a moment is the one in force then.

    ``rates`` (validated by finops.rates)::

        {"cpu_hour": "0.05",
         "gpu_hour": {"default": "2.50", "NVIDIA H100 80GB HBM3": "3.20"},
         "storage_gb_month": {"raw": "0.02", "derived": "0.02", "checkpoints": "0.02",
                              "models": "0.02", "archive": "0.01"},
         "tokens_million": "0.50"}
    """

    organisation = models.ForeignKey(
        "orgs.Organisation", on_delete=models.CASCADE, related_name="rate_cards"
    )
    version = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="EUR")
    rates = models.JSONField()
    effective_from = models.DateTimeField()
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "version"], name="one_rate_card_version"
            )
        ]
        indexes = [models.Index(fields=["organisation", "effective_from"])]
        ordering = ["organisation_id", "-version"]

    def __str__(self) -> str:
        return f"{self.organisation} rate card v{self.version}"


class JobAttemptUsage(models.Model):
    """What one attempt of a job used, as its worker measured it (cumulative figures, the
    latest report wins). A resumed job's usage is the sum over its attempts."""

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="usage")
    attempt = models.PositiveIntegerField()
    # Denormalised from the job, so the overview aggregates one table.
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=40)
    queue = models.CharField(max_length=20)
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    final = models.BooleanField(default=False)  # the attempt's terminal report arrived
    wall_seconds = models.FloatField(default=0.0)
    cpu_seconds = models.FloatField(default=0.0)
    peak_rss_bytes = models.PositiveBigIntegerField(default=0)
    device_type = models.CharField(max_length=100, blank=True)  # "cpu" or the GPU's name
    device_count = models.PositiveSmallIntegerField(default=0)  # GPUs; 0 on CPU workers
    gpu_seconds = models.FloatField(default=0.0)  # wall seconds x GPUs held
    gpu_util_mean = models.FloatField(null=True, blank=True)  # percent, over the samples
    # How many distinct samples the mean is over (to add later ones to it exactly).
    gpu_util_sample_count = models.PositiveIntegerField(default=0)
    # [[unix time, percent], ...]: the most recent samples (bounded), for the job page chart.
    gpu_util_samples = models.JSONField(default=list, blank=True)
    # Set while the GPUs stay under the idle threshold; cleared when they work again.
    idle_since = models.DateTimeField(null=True, blank=True)
    bytes_read = models.PositiveBigIntegerField(default=0)
    bytes_written = models.PositiveBigIntegerField(default=0)
    rate_card = models.ForeignKey(
        RateCard, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    cost = models.DecimalField(default=0, **MONEY)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="one_usage_per_attempt")
        ]
        indexes = [
            models.Index(fields=["project", "started_at"]),
            models.Index(fields=["started_at"]),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt}"


class StorageSnapshot(models.Model):
    """Bytes a project stores of one kind on one day, from the database's manifests."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    kind = models.CharField(max_length=12, choices=StorageKind.choices)
    bytes = models.PositiveBigIntegerField()
    object_count = models.PositiveIntegerField(default=0)
    rate_card = models.ForeignKey(
        RateCard, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    cost = models.DecimalField(default=0, **MONEY)  # that day's share of a GB-month

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "day", "kind"], name="one_storage_snapshot_per_day"
            )
        ]
        indexes = [
            models.Index(fields=["day"]),
            # The overview's growth chart and a month's storage cost sum a window of days
            # from the index alone.
            models.Index(
                fields=["day"],
                include=["project", "kind", "bytes", "cost"],
                name="finops_storage_growth",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.kind} on {self.day}"


class ServingUsage(models.Model):
    """Requests and tokens one deployment served in one hour."""

    deployment = models.ForeignKey(
        "serving.Deployment", on_delete=models.CASCADE, related_name="usage"
    )
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()  # the hour's start, UTC
    requests = models.PositiveIntegerField(default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)
    rate_card = models.ForeignKey(
        RateCard, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    cost = models.DecimalField(default=0, **MONEY)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "hour"], name="one_serving_usage_hour")
        ]
        indexes = [models.Index(fields=["project", "hour"])]

    def __str__(self) -> str:
        return f"deployment {self.deployment_id} at {self.hour:%Y-%m-%d %H}h"


class Budget(models.Model):
    """A project's spending limit for one month (``month`` is its first day); a
    ``recurring`` budget also applies to the later months that have none of their own."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    month = models.DateField()
    amount = models.DecimalField(**MONEY)
    recurring = models.BooleanField(default=True)
    # When spent: new GPU jobs of the project are refused (409 naming the budget).
    hard_stop = models.BooleanField(default=False)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "month"], name="one_budget_per_month")
        ]
        ordering = ["project_id", "-month"]

    def __str__(self) -> str:
        return f"{self.project} budget {self.month:%Y-%m}"


class BudgetAlert(models.Model):
    """A threshold crossed (80 or 100 percent) in one month: fired once."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    month = models.DateField()
    threshold = models.PositiveSmallIntegerField()  # percent
    spent = models.DecimalField(**MONEY)
    amount = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "month", "threshold"], name="one_alert_per_threshold"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.threshold}% of {self.month:%Y-%m}"


class ProjectQuota(models.Model):
    """GPU limits of a project; None = no limit, 0 = no GPU jobs at all."""

    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="quota"
    )
    max_concurrent_gpu_jobs = models.PositiveIntegerField(null=True, blank=True)
    max_gpus = models.PositiveIntegerField(null=True, blank=True)  # held at once, all jobs
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.project} GPU quota"


class OrgWebhook(models.Model):
    """Where the organisation's notifications (budget alerts, ...) are POSTed as JSON."""

    organisation = models.OneToOneField(
        "orgs.Organisation", on_delete=models.CASCADE, related_name="webhook"
    )
    url = models.URLField(max_length=500)
    # Signs each body (HMAC-SHA256 in a header) so the receiver can check the sender.
    secret = models.CharField(max_length=128, blank=True)
    enabled = models.BooleanField(default=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organisation} webhook"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"  # gave up after the last retry


class WebhookDelivery(models.Model):
    """One notification for the webhook: an outbox row, sent and retried with backoff by the
    control worker, never in the request or job that caused it."""

    organisation = models.ForeignKey(
        "orgs.Organisation", on_delete=models.CASCADE, related_name="+"
    )
    event = models.CharField(max_length=60)  # e.g. "budget.alert"
    payload = models.JSONField()
    state = models.CharField(
        max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    last_error = models.TextField(blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.event} to {self.organisation} ({self.state})"
