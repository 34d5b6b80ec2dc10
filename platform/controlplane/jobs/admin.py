from django.contrib import admin

from controlplane.jobs.models import Job, JobArtifact, JobDispatch, JobEventRecord, JobMetric


class ArtifactInline(admin.TabularInline):
    model = JobArtifact
    extra = 0
    readonly_fields = ["kind", "name", "object_key", "sha256", "size", "step", "created_at"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
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
class JobEventRecordAdmin(admin.ModelAdmin):
    list_display = ["job", "attempt", "seq", "type", "emitted_at", "applied_at"]
    list_filter = ["type"]


@admin.register(JobMetric)
class JobMetricAdmin(admin.ModelAdmin):
    list_display = ["job", "key", "step", "value", "recorded_at"]
    list_filter = ["key"]


@admin.register(JobArtifact)
class JobArtifactAdmin(admin.ModelAdmin):
    list_display = ["job", "kind", "name", "object_key", "size", "step", "created_at"]
    list_filter = ["kind"]


@admin.register(JobDispatch)
class JobDispatchAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request) -> bool:
        return False
