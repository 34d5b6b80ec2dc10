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


class PendingUpload(models.Model):
    """An object key about to be written for an upload: the intent, committed first.

    The store has no transaction with the database. Recording the key before the first
    byte goes out means that a process killed between the store write and the commit of
    the `Upload` row leaves a row pointing at its object, which the reaper removes
    (`upload_orphans_reap`). The intent is deleted in the same transaction that creates
    the `Upload`, so an upload that completed never has one.
    """

    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="+")
    object_key = models.CharField(max_length=512, unique=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"pending {self.object_key}"
