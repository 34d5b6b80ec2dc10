from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.names import name_problem
from controlplane.projects.models import Project
from controlplane.storage import object_store
from controlplane.uploads.models import PendingUpload, Upload
from workers.storage import StorageError, project_key

logger = logging.getLogger(__name__)

# An upload intent older than this belongs to a request that died (see PendingUpload).
PENDING_UPLOAD_MAX_AGE = timedelta(hours=1)


class UploadError(Exception):
    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


_CONTENT_TYPE_MAX = Upload._meta.get_field("content_type").max_length
_CONTENT_TYPE = re.compile(rf"(?=.{{3,{_CONTENT_TYPE_MAX}}}$)[!-~]+/[!-~]+(?:;[ -~]*)?")
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


def upload_create_from_request(
    *, project: Project, actor: User, files, field: str = "file"
) -> Upload:
    """The one file a form or API client sent under `field` (Django's UploadedFile: a temp
    file, or small in memory), streamed into the store by `upload_create`."""
    uploaded = single_uploaded_file(files, field)
    return upload_create(
        project=project,
        actor=actor,
        stream=uploaded.file,
        filename=uploaded.name,
        size=uploaded.size,
        content_type=uploaded.content_type or "",
    )


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
    is deleted again, so a failed upload leaves neither a row nor bytes behind. A process
    killed in between leaves a `PendingUpload`, and the reaper removes the object.
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
    content_type = content_type or "application/octet-stream"
    # It becomes an HTTP header of the object and a 120-character column: checked here, so
    # neither the store nor the database refuses it half-way through (a 500).
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise UploadError(
            f"content type {content_type[:60]!r} must be printable ASCII 'type/subtype', "
            f"at most {_CONTENT_TYPE_MAX} characters"
        )
    store = object_store()
    key = project_key(project.pk, "uploads", uuid.uuid4().hex)
    # The intent first, committed on its own: whatever happens next, a row knows the key.
    intent = PendingUpload.objects.create(project=project, object_key=key)
    try:
        try:
            stored = store.put_stream(key, stream, length=size, content_type=content_type)
        except StorageError as error:
            raise UploadError(
                f"the object store did not accept the file ({error}); try again later", status=503
            ) from error
        with transaction.atomic():
            upload = Upload.objects.create(
                project=project,
                filename=display_filename(filename),
                object_key=key,
                size=stored.size,
                sha256=stored.sha256,
                content_type=content_type,
                uploaded_by=actor,
            )
            audit_append(
                project=project,
                actor=actor,
                action="upload.created",
                artifact=upload,
                payload={"sha256": stored.sha256, "size": stored.size, "object_key": key},
            )
            PendingUpload.objects.filter(pk=intent.pk).delete()
    except BaseException:
        _undo_pending(intent)
        raise
    return upload


def _undo_pending(intent: PendingUpload) -> None:
    """Remove the object and its intent; what fails here is left to the reaper."""
    try:
        object_store().delete(intent.object_key)
        PendingUpload.objects.filter(pk=intent.pk).delete()
    except Exception:  # noqa: BLE001 - the original error is the one to report
        logger.exception("cleaning up %s failed; the reaper removes it", intent.object_key)


def upload_orphans_reap(*, now: datetime | None = None) -> list[str]:
    """Remove objects of uploads whose process died before their row was committed.

    An intent older than PENDING_UPLOAD_MAX_AGE belongs to no live request (a request is
    killed by gunicorn's timeout long before). Returns the object keys removed.
    """
    cutoff = (now or timezone.now()) - PENDING_UPLOAD_MAX_AGE
    removed = []
    for intent in PendingUpload.objects.filter(created_at__lt=cutoff).select_related("project"):
        if Upload.objects.filter(object_key=intent.object_key).exists():
            PendingUpload.objects.filter(pk=intent.pk).delete()  # completed after all
            continue
        try:
            object_store().delete(intent.object_key)
        except StorageError:
            logger.exception("could not remove orphan upload %s", intent.object_key)
            continue
        with transaction.atomic():
            if PendingUpload.objects.filter(pk=intent.pk).delete()[0] == 0:
                continue  # another reaper got there first
            audit_append(
                project=intent.project,
                actor=None,
                action="upload.orphan_removed",
                artifact=("upload-object", intent.object_key[-64:]),
                payload={
                    "object_key": intent.object_key,
                    "reason": "the uploading process ended before its upload was recorded",
                },
            )
        removed.append(intent.object_key)
    return removed
