"""Files uploaded into a project: the bytes live in the object store, this row points at them."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Upload(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.PROTECT, related_name="uploads"
    )
    # The user's file name, for display only: the object key is made by the server.
    filename = models.CharField(max_length=255)
    object_key = models.CharField(max_length=512, unique=True)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=120, default="application/octet-stream")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.size} bytes)"
