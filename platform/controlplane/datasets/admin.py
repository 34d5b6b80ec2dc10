"""Read-only views for staff. Every change to datasets and versions goes through the
services, which audit it, keep version numbers unique for good and remove objects with
their rows; an admin form that edits `number` or `state`, or deletes a row, would not."""

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin, ReadOnlyInline
from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "slug",
        "project",
        "kind",
        "license",
        "subject_field",
        "created_by",
        "created_at",
    ]
    list_filter = ["kind", "project"]
    search_fields = ["name", "slug", "source", "license"]


class DatasetFileInline(ReadOnlyInline):
    model = DatasetFile
    fields = ["name", "role", "object_key", "size", "sha256", "record_count"]
    readonly_fields = fields


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ReadOnlyAdmin):
    list_display = [
        "dataset",
        "number",
        "state",
        "byte_count",
        "record_count",
        "produced_by",
        "created_by",
        "created_at",
    ]
    list_filter = ["state", "dataset__project"]
    search_fields = ["dataset__name", "dataset__slug", "note"]
    readonly_fields = [
        "byte_count",
        "record_count",
        "produced_by",
        "report",
        "preview",
        "ready_at",
        "created_at",
    ]
    inlines = [DatasetFileInline]
