"""Open multipart uploads that no dataset version points at: found, aborted, audited.

The store has no transaction with the database. An upload opened for a version whose
transaction then failed (a crash, a killed worker, an SDK that lost the answer of a
create) is invisible to every row, so only a sweep of the store itself finds it.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

from django.conf import settings

from controlplane.audit.services import audit_append
from controlplane.datasets.models import DatasetFile
from controlplane.projects.models import Project
from controlplane.storage import object_store
from workers.storage import OpenUpload, StorageError

logger = logging.getLogger(__name__)

_PROJECT_OF_KEY = re.compile(r"^projects/(\d+)/")


def multipart_orphans_abort(*, now: datetime) -> list[str]:
    """Abort uploads older than DATASET_UPLOAD_TTL_SECONDS without a row; their upload ids."""
    store = object_store()
    cutoff = now - timedelta(seconds=settings.DATASET_UPLOAD_TTL_SECONDS)
    try:
        old = [u for u in store.multipart_list("projects/") if u.initiated < cutoff]
    except NotImplementedError:
        logger.warning("the object store cannot list open uploads; orphans are not swept")
        return []
    if not old:
        return []
    owned = set(
        DatasetFile.objects.filter(upload_id__in=[u.upload_id for u in old]).values_list(
            "upload_id", flat=True
        )
    )
    aborted = []
    for upload in old:
        if upload.upload_id in owned:
            continue  # its version's own deadline governs it
        try:
            store.multipart_abort(upload.key, upload.upload_id)
        except StorageError:
            logger.exception("could not abort orphan upload %s of %s", upload.upload_id, upload.key)
            continue
        aborted.append(upload.upload_id)
        _audit(upload)
    return aborted


def _audit(upload: OpenUpload) -> None:
    logger.info("aborted orphan multipart upload %s of %s", upload.upload_id, upload.key)
    match = _PROJECT_OF_KEY.match(upload.key)
    project = Project.objects.filter(pk=int(match.group(1))).first() if match else None
    if project is None:
        return
    audit_append(
        project=project,
        actor=None,
        action="dataset_upload.orphan_aborted",
        # S3 upload ids can be longer than an artifact id; the payload holds it whole.
        artifact=("multipartupload", upload.upload_id[:64]),
        payload={
            "upload_id": upload.upload_id,
            "object_key": upload.key,
            "initiated": upload.initiated.isoformat(),
            "reason": "no dataset version points at it and it is older than the upload TTL",
        },
    )
