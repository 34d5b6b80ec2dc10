"""Reads of the uploads app."""

from __future__ import annotations

from django.db.models import QuerySet

from controlplane.projects.models import Project
from controlplane.uploads.models import Upload


def uploads_for(project: Project) -> QuerySet[Upload]:
    """A project's uploads, newest first, with who uploaded them."""
    return Upload.objects.filter(project=project).select_related("uploaded_by")


def upload_in(project: Project, upload_id: int) -> Upload | None:
    """The upload, or None when it is not one of this project's."""
    return uploads_for(project).filter(pk=upload_id).first()
