from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin
from controlplane.uploads.models import Upload


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    """Read-only: deleting a row here would orphan its object, unaudited."""

    list_display = ["filename", "project", "size", "sha256", "uploaded_by", "created_at"]
    list_filter = ["project"]
    search_fields = ["filename", "sha256", "object_key"]
    readonly_fields = ["object_key", "size", "sha256", "created_at"]
