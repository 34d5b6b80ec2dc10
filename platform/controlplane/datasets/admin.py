from django.contrib import admin

from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
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


class DatasetFileInline(admin.TabularInline):
    model = DatasetFile
    extra = 0
    fields = ["name", "role", "object_key", "size", "sha256", "record_count"]
    readonly_fields = fields
    can_delete = False


@admin.register(DatasetVersion)
class DatasetVersionAdmin(admin.ModelAdmin):
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
