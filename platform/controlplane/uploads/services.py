from __future__ import annotations

import re
import uuid
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from controlplane.audit.services import audit_append
from controlplane.names import name_problem
from controlplane.projects.models import Project
from controlplane.storage import object_store
from controlplane.uploads.models import Upload
from workers.storage import project_key


class UploadError(Exception):
    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


_UNSAFE_DISPLAY = re.compile(r"[\x00-\x1f\x7f/\\]+")


def display_filename(name: str) -> str:
    """The user's name, shown in the UI only; path parts and control characters dropped."""
    base = _UNSAFE_DISPLAY.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip(" .")
    return (base or "upload")[:255]


def single_uploaded_file(files, field: str = "file"):
    """The one file sent under `field`; UploadError when there is none, or more than one.

    Two parts under the same form field used to be accepted with the last one kept: the
    client believed it had stored both. Other file fields are refused too.
    """
    sent = files.getlist(field)
    others = sorted(name for name in files if name != field)
    if len(sent) != 1 or others:
        detail = f"got {len(sent)} under '{field}'" + (
            f" and files under {', '.join(others)}" if others else ""
        )
        raise UploadError(f"send exactly one file in the '{field}' field ({detail})")
    return sent[0]


def upload_create(
    *,
    project: Project,
    actor: User,
    stream: BinaryIO,
    filename: str,
    size: int,
    content_type: str = "application/octet-stream",
) -> Upload:
    """Stream a file into the object store, then record it.

    The object is written first and the row after; if the row cannot be written the object
    is deleted again, so a failed upload leaves neither a row nor bytes behind.
    """
    if size > settings.UPLOAD_MAX_BYTES:
        raise UploadError(
            f"file is {size} bytes; the limit is {settings.UPLOAD_MAX_BYTES}", status=413
        )
    if size == 0:
        raise UploadError("file is empty")
    problem = name_problem(filename, field="file name")
    if problem:
        raise UploadError(problem)
    store = object_store()
    key = project_key(project.pk, "uploads", uuid.uuid4().hex)
    stored = store.put_stream(
        key, stream, length=size, content_type=content_type or "application/octet-stream"
    )
    try:
        with transaction.atomic():
            upload = Upload.objects.create(
                project=project,
                filename=display_filename(filename),
                object_key=key,
                size=stored.size,
                sha256=stored.sha256,
                content_type=content_type or "application/octet-stream",
                uploaded_by=actor,
            )
            audit_append(
                project=project,
                actor=actor,
                action="upload.created",
                artifact=upload,
                payload={"sha256": stored.sha256, "size": stored.size, "object_key": key},
            )
    except BaseException:
        store.delete(key)
        raise
    return upload
