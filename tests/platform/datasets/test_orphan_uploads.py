"""The reaper aborts open multipart uploads that no version points at (and only those).

Such orphans were left by a `part_size` the database refused after the store had opened
the upload, and by any crash between the store and the database commit.
"""

import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(team):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )


def _age(store, upload_id: str, seconds: int) -> None:
    """Backdate a local upload's creation (its manifest's mtime)."""
    manifest = store.bucket_dir / ".multipart" / upload_id / "upload.json"
    then = time.time() - seconds
    os.utime(manifest, (then, then))


def test_old_orphans_are_aborted_and_audited(team, dataset, settings):
    from controlplane.audit.models import AuditEvent
    from controlplane.datasets.services import DeclaredFile, dataset_uploads_reap
    from controlplane.datasets.services import dataset_version_start as start
    from controlplane.storage import object_store

    store = object_store()
    ttl = settings.DATASET_UPLOAD_TTL_SECONDS
    key = f"projects/{team.project.pk}/datasets/{dataset.pk}/v9/upload/00000-lost"
    orphan = store.multipart_create(key)
    young_orphan = store.multipart_create(key + "-young")
    _age(store, orphan, ttl + 60)
    # A live version's upload, just as old: its own deadline governs it, not the sweep.
    _version, (live,) = start(
        dataset=dataset, actor=team.engineer, files=[DeclaredFile("a", 1, "a" * 64)]
    )
    _age(store, live.file.upload_id, ttl + 60)

    assert dataset_uploads_reap() == []
    open_ids = {u.upload_id for u in store.multipart_list()}
    assert open_ids == {young_orphan, live.file.upload_id}
    event = AuditEvent.objects.get(action="dataset_upload.orphan_aborted")
    assert event.project_id == team.project.pk and event.payload["object_key"] == key
    # A TTL later both are old: the orphan goes, and the version's own deadline passed too.
    dataset_uploads_reap(now=timezone.now() + timedelta(seconds=ttl + 60))
    assert list(store.multipart_list()) == []


def test_s3_orphans_are_aborted_and_owned_uploads_kept(team, dataset, s3_platform_store):
    from controlplane.datasets.services import DeclaredFile, dataset_uploads_reap
    from controlplane.datasets.services import dataset_version_start as start

    store = s3_platform_store
    orphan = store.multipart_create(f"projects/{team.project.pk}/datasets/{dataset.pk}/v9/x")
    _version, (live,) = start(
        dataset=dataset, actor=team.engineer, files=[DeclaredFile("a", 1, "a" * 64)]
    )
    # moto dates every upload 2010-11-10, so both look older than the TTL here.
    assert orphan in {u.upload_id for u in store.multipart_list()}
    dataset_uploads_reap()
    assert {u.upload_id for u in store.multipart_list()} == {live.file.upload_id}


def test_a_refused_part_size_opens_no_s3_upload(team, api, dataset, s3_platform_store):
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/",
        {
            "files": [{"name": "a.txt", "size": 1, "sha256": "a" * 64}],
            "part_size": 9223372036854775808,
        },
        format="json",
    )
    assert response.status_code == 400 and "part_size" in response.json()["error"]["fields"]
    assert list(s3_platform_store.multipart_list()) == []
