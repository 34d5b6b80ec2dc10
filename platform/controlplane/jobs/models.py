"""Jobs: the state of record of work done by workers.

A job's state lives here, not in a broker message: the platform dispatches a JobSpec,
the worker reports JobEvents, and the control worker applies them (see services.py).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Job(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=40)
    queue = models.CharField(max_length=20, default="cpu")
    state = models.CharField(
        max_length=20, choices=JobState.choices, default=JobState.QUEUED, db_index=True
    )
    params = models.JSONField(default=dict)
    inputs = models.JSONField(default=list)  # [{"uri", "sha256", "size"}]: ArtifactRef dicts
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Re-dispatch bumps the attempt; events of an older attempt are ignored.
    attempt = models.PositiveIntegerField(default=1)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Why a queued job is not dispatched yet: "quota" (the project's GPU quota is full; the
    # job is sent when a slot frees, in submission order), "capacity" (no live worker of
    # its queue has the devices it needs: held_reason says what it needs and what there
    # is; it is sent when one appears, jobs/capacity.py) or "" (dispatched or sendable).
    # A job held for capacity holds its quota slot: it was admitted.
    held_for = models.CharField(max_length=20, blank=True, db_index=True)
    held_reason = models.CharField(max_length=300, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    progress = models.FloatField(default=0.0)
    progress_message = models.CharField(max_length=300, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    resume_checkpoint = models.CharField(max_length=512, blank=True)
    # Runs are grouped by experiment (a name within the project) here and in MLflow.
    experiment = models.CharField(max_length=100, blank=True, db_index=True)
    tracking_run_id = models.CharField(max_length=64, blank=True)  # the job's MLflow run

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "state"]),
            models.Index(fields=["project", "-created_at"]),
            # Jobs that ended lately: /metrics' run times and the overview's success rate,
            # without reading every old job.
            models.Index(fields=["finished_at"], name="job_finished_at"),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.kind}, {self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def tracking_url(self) -> str:
        if not (self.tracking_run_id and settings.MLFLOW_UI_URL):
            return ""
        return f"{settings.MLFLOW_UI_URL}/#/runs/{self.tracking_run_id}"

    @property
    def output_prefix(self) -> str:
        return f"projects/{self.project_id}/jobs/{self.pk}/"


class JobEventRecord(models.Model):
    """Every applied JobEvent, once: the unique key is the idempotency guard."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    attempt = models.PositiveIntegerField()
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=20)
    payload = models.JSONField(default=dict)
    emitted_at = models.DateTimeField()
    applied_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt", "seq"], name="event_applied_once")
        ]
        ordering = ["job_id", "attempt", "seq"]
        indexes = [models.Index(fields=["job", "type"])]

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt} event #{self.seq} ({self.type})"


class JobMetric(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    key = models.CharField(max_length=100)
    step = models.PositiveBigIntegerField()
    value = models.FloatField()
    recorded_at = models.DateTimeField()

    class Meta:
        # A step that is replayed after a resume overwrites, never duplicates.
        constraints = [
            models.UniqueConstraint(fields=["job", "key", "step"], name="one_metric_per_step")
        ]
        # The overview's time to first metric: a job's earliest metric is one probe, however
        # long its series.
        indexes = [models.Index(fields=["job", "recorded_at"], name="jobs_metric_first")]
        ordering = ["job_id", "key", "step"]

    def __str__(self) -> str:
        return f"job {self.job_id} {self.key}@{self.step} = {self.value:g}"


class ArtifactKind(models.TextChoices):
    OUTPUT = "output", "Output"
    CHECKPOINT = "checkpoint", "Checkpoint"


class JobArtifact(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(
        max_length=20, choices=ArtifactKind.choices, default=ArtifactKind.OUTPUT
    )
    name = models.CharField(max_length=200)
    step = models.PositiveBigIntegerField(null=True, blank=True)  # checkpoints: training step
    object_key = models.CharField(max_length=512, unique=True)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} of job {self.job_id}"


class DispatchState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    OBSOLETE = "obsolete", "Obsolete"  # the attempt was superseded or the job left QUEUED


class JobDispatch(models.Model):
    """The outbox: one row per job attempt to send, written in the job's own transaction.

    A broker outage can then never lose an accepted job nor turn it into a 500: the row
    is sent right after commit and, failing that, by `control.send_dispatch_outbox` with
    backoff (services/outbox.py).
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dispatches")
    attempt = models.PositiveIntegerField()
    state = models.CharField(
        max_length=20, choices=DispatchState.choices, default=DispatchState.PENDING
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # When a sender may (next) try: also a claim, pushed ahead while a sender holds the row.
    next_attempt_at = models.DateTimeField()
    send_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="one_dispatch_per_attempt")
        ]
        indexes = [
            # The sender's scan: only pending rows, oldest due first.
            models.Index(
                fields=["next_attempt_at"],
                name="jobs_dispatch_due",
                condition=models.Q(state=DispatchState.PENDING),
            )
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"dispatch of job {self.job_id} attempt {self.attempt} ({self.state})"


class JobEventStream(models.Model):
    """What the platform applied of one attempt's event sequence: the gap detector.

    Workers number an attempt's events 0, 1, 2 ... without holes, so the attempt is
    complete up to `max_seq` exactly when `applied_count == max_seq + 1`; anything less is
    a gap (an event lost or still in flight). Updated with every applied event, under the
    job's row lock, so it never disagrees with JobEventRecord.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="event_streams")
    attempt = models.PositiveIntegerField()
    max_seq = models.IntegerField(default=-1)  # -1: nothing applied yet
    applied_count = models.PositiveIntegerField(default=0)
    # When the current gap was first seen (None: no gap); a gap older than a few seconds
    # is not just out-of-order delivery, and the reaper asks the worker to re-send.
    gap_since = models.DateTimeField(null=True, blank=True)
    resend_requested_at = models.DateTimeField(null=True, blank=True)
    resend_requests = models.PositiveIntegerField(default=0)
    # Set when the attempt's outputs were taken from its completion record in the store:
    # every artifact/checkpoint is then applied even if other events (metrics) are missing.
    outputs_reconciled_at = models.DateTimeField(null=True, blank=True)
    # The seq of a `finished` that arrived before the events ahead of it: the attempt has
    # at least this many events, so events lost just before the finish are a gap too.
    waiting_finish_seq = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="one_stream_per_attempt")
        ]
        ordering = ["job_id", "attempt"]

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt}: {self.applied_count} events"

    @property
    def expected_count(self) -> int:
        """Events the attempt has at least: up to the highest seq seen (or a waiting finish)."""
        return max(self.max_seq + 1, self.waiting_finish_seq or 0)

    @property
    def has_gap(self) -> bool:
        return self.applied_count < self.expected_count

    def missing_seqs(self, *, below: int | None = None, limit: int = 1000) -> list[int]:
        """The seqs below `expected_count` (or `below`, when higher) not applied yet.

        One query, and only when something is missing.
        """
        end = max(self.expected_count, below or 0)
        if self.applied_count >= end:
            return []
        applied = set(
            JobEventRecord.objects.filter(
                job_id=self.job_id, attempt=self.attempt, seq__lt=end
            ).values_list("seq", flat=True)
        )
        return [seq for seq in range(end) if seq not in applied][:limit]


class DeadLetterEvent(models.Model):
    """A worker event that could not be applied: parked here, never dropped silently.

    Poison events (a non-transient error, or retries exhausted) land here with their error;
    the job page and the admin list them, and the admin can apply them again once the
    cause is fixed. Parking is idempotent per (job, attempt, seq): a redelivered poison
    event bumps `attempts` and `last_seen_at`.
    """

    job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.CASCADE, related_name="dead_letters"
    )
    attempt = models.PositiveIntegerField(null=True, blank=True)
    seq = models.PositiveIntegerField(null=True, blank=True)
    event = models.JSONField()  # the message as received, to apply again
    error = models.TextField()
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)
    attempts = models.PositiveIntegerField(default=1)  # deliveries that failed
    resolved_at = models.DateTimeField(null=True, blank=True)  # applied later (admin action)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt", "seq"], name="park_event_once")
        ]
        ordering = ["-last_seen_at", "-id"]

    def __str__(self) -> str:
        return f"dead letter: job {self.job_id} attempt {self.attempt} event #{self.seq}"


class GangMember(models.Model):
    """One node of a multi-node attempt (controlplane/jobs/gang.py): when it joined, where
    it would host the rendezvous, its last beat (a node's lease), how it left."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="gang_members")
    attempt = models.PositiveIntegerField()
    member = models.PositiveIntegerField()  # which node task of the gang (0..nodes-1)
    endpoint = models.CharField(max_length=300)  # host:port it would host the rendezvous at
    is_host = models.BooleanField(default=False)  # the first to join: hosts the rendezvous
    joined_at = models.DateTimeField()
    last_beat_at = models.DateTimeField()
    left_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job", "attempt", "member"], name="one_gang_member_per_node"
            )
        ]
        ordering = ["job_id", "attempt", "member"]

    def __str__(self) -> str:
        return f"node {self.member} of job {self.job_id} attempt {self.attempt}"


class Worker(models.Model):
    """A job worker as its own heartbeat describes it (workers/registry.py): the registry
    the dispatcher asks whether a job can run anywhere (jobs/capacity.py)."""

    name = models.CharField(max_length=200, unique=True)  # Celery node name, gpu@host
    queues = models.JSONField(default=list)
    gpus = models.PositiveIntegerField(default=0)
    gpu_type = models.CharField(max_length=100, blank=True)
    gpu_memory_bytes = models.PositiveBigIntegerField(default=0)  # the smallest of its GPUs
    cpus = models.PositiveIntegerField(default=0)
    heartbeat_seconds = models.FloatField(default=15.0)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    left_at = models.DateTimeField(null=True, blank=True)  # a clean shutdown said goodbye

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"worker {self.name} ({', '.join(self.queues)}; {self.gpus} GPU(s))"

    def devices_for(self, queue: str) -> int:
        """Processes of one job it can run: its GPUs on the gpu queue, else its CPUs."""
        return self.gpus if queue == "gpu" else self.cpus
