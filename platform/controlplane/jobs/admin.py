"""Jobs and everything a job leaves behind are made by the product (the job services and the
control worker), never typed in: the admin shows them and re-applies parked events, nothing
more (no add, change or delete, which would bypass the state machine and the audit trail)."""

from django.contrib import admin, messages

from controlplane.admin_readonly import ReadOnlyAdmin, ReadOnlyInline
from controlplane.jobs.models import (
    DeadLetterEvent,
    Job,
    JobArtifact,
    JobDispatch,
    JobEventRecord,
    JobEventStream,
    JobMetric,
    Worker,
)


class ArtifactInline(ReadOnlyInline):
    model = JobArtifact
    fields = readonly_fields = [
        "kind",
        "name",
        "object_key",
        "sha256",
        "size",
        "step",
        "created_at",
    ]


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "state",
        "attempt",
        "queue",
        "worker",
        "created_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["state", "kind", "queue", "project"]
    search_fields = ["id", "worker", "error"]
    readonly_fields = [
        "created_at",
        "started_at",
        "finished_at",
        "lease_expires_at",
        "last_heartbeat_at",
    ]
    inlines = [ArtifactInline]


@admin.register(JobEventRecord)
class JobEventRecordAdmin(ReadOnlyAdmin):
    list_display = ["job", "attempt", "seq", "type", "emitted_at", "applied_at"]
    list_filter = ["type"]


@admin.register(JobMetric)
class JobMetricAdmin(ReadOnlyAdmin):
    list_display = ["job", "key", "step", "value", "recorded_at"]
    list_filter = ["key"]


@admin.register(JobArtifact)
class JobArtifactAdmin(ReadOnlyAdmin):
    list_display = ["job", "kind", "name", "object_key", "size", "step", "created_at"]
    list_filter = ["kind"]


@admin.register(JobDispatch)
class JobDispatchAdmin(ReadOnlyAdmin):
    """The outbox, read-only: rows are written by job services and sent by the control worker."""

    list_display = ["id", "job", "attempt", "state", "send_attempts", "next_attempt_at", "sent_at"]
    list_filter = ["state"]
    readonly_fields = [
        "job",
        "attempt",
        "state",
        "created_at",
        "next_attempt_at",
        "send_attempts",
        "last_error",
        "sent_at",
    ]


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """The worker registry, read-only: written by the workers' own heartbeats."""

    list_display = ["name", "queues", "gpus", "gpu_type", "cpus", "last_seen_at", "left_at"]
    readonly_fields = [field.name for field in Worker._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(JobEventStream)
class JobEventStreamAdmin(ReadOnlyAdmin):
    list_display = [
        "job",
        "attempt",
        "applied_count",
        "max_seq",
        "gap_since",
        "resend_requests",
        "outputs_reconciled_at",
    ]
    list_filter = [("gap_since", admin.EmptyFieldListFilter)]
    readonly_fields = [field.name for field in JobEventStream._meta.fields]


@admin.register(DeadLetterEvent)
class DeadLetterEventAdmin(ReadOnlyAdmin):
    """Events the control worker could not apply: read the error, fix the cause, apply again."""

    list_display = [
        "id",
        "job",
        "attempt",
        "seq",
        "error",
        "attempts",
        "last_seen_at",
        "resolved_at",
    ]
    list_filter = [("resolved_at", admin.EmptyFieldListFilter)]
    search_fields = ["job__id", "error"]
    readonly_fields = [field.name for field in DeadLetterEvent._meta.fields]
    actions = ["apply_again"]

    @admin.action(description="Apply the selected events again")
    def apply_again(self, request, queryset):
        from controlplane.jobs.services import dead_letter_reapply

        done = 0
        for letter in queryset.filter(resolved_at__isnull=True).select_related("job__project"):
            try:
                dead_letter_reapply(letter=letter, actor=request.user)
                done += 1
            except Exception as error:  # noqa: BLE001 - shown to the admin, the letter stays
                self.message_user(request, f"#{letter.pk}: {error}", messages.ERROR)
        self.message_user(request, f"{done} event(s) applied again")
