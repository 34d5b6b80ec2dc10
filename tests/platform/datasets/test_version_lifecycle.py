"""A version's life: numbers never reused, removals audited, store failures survived."""

import hashlib
import io

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(team):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )


def _start(dataset, user, data: bytes, sha256: str | None = None):
    from controlplane.datasets.services import DeclaredFile, dataset_version_start

    declared = DeclaredFile("a.txt", len(data), sha256 or hashlib.sha256(data).hexdigest())
    return dataset_version_start(dataset=dataset, actor=user, files=[declared])


def _send(upload, data: bytes) -> dict:
    from controlplane.storage import object_store

    etag = object_store().upload_part(
        upload.file.object_key, upload.file.upload_id, 1, io.BytesIO(data), len(data)
    )
    return {upload.file.pk: [(1, etag)]}


def _removal(version_id):
    from controlplane.audit.models import AuditEvent

    return AuditEvent.objects.get(
        artifact_type="datasetversion",
        artifact_id=str(version_id),
        action="dataset_version.removed",
    )


def test_an_aborted_versions_number_is_not_reused(team, dataset):
    from controlplane.datasets.services import dataset_version_abort

    first, _ = _start(dataset, team.engineer, b"first")
    assert first.number == 1
    dataset_version_abort(version=first, actor=team.engineer)
    second, _ = _start(dataset, team.engineer, b"second")
    assert second.number == 2
    removal = _removal(first.pk)
    assert removal.payload["number"] == 1 and removal.payload["reason"] == "aborted by the uploader"
    assert removal.actor_id == team.engineer.pk


def test_a_failed_complete_is_audited_and_its_number_stays_taken(team, dataset):
    from controlplane.datasets.services import DatasetError, dataset_version_complete
    from controlplane.storage import object_store

    version, (upload,) = _start(dataset, team.engineer, b"data", sha256="0" * 64)
    parts = _send(upload, b"data")
    with pytest.raises(DatasetError, match="sha256"):
        dataset_version_complete(version=version, actor=team.engineer, parts=parts)
    assert not object_store().exists(upload.file.object_key)
    assert "sha256" in _removal(version.pk).payload["reason"]
    again, _ = _start(dataset, team.engineer, b"data")
    assert again.number == 2


def test_numbers_continue_from_versions_made_before_the_counter(team, dataset):
    """Rows written before the counter existed (or by hand) are never collided with."""
    from controlplane.datasets.models import DatasetVersion

    DatasetVersion.objects.create(dataset=dataset, number=7, created_by=team.engineer)
    version, _ = _start(dataset, team.engineer, b"x")
    assert version.number == 8


def test_aborting_a_ready_version_is_refused(team, dataset, make_ready_version):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import DatasetError, dataset_version_abort

    ready = make_ready_version(dataset, team.engineer, {"a.txt": b"kept"})
    with pytest.raises(DatasetError) as refused:
        dataset_version_abort(version=ready, actor=team.engineer)
    assert refused.value.status == 409
    assert DatasetVersion.objects.get(pk=ready.pk).state == "ready"


def test_an_abort_the_store_cannot_finish_is_a_503_and_the_reaper_finishes_it(
    team, dataset, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import (
        DatasetError,
        dataset_uploads_reap,
        dataset_version_abort,
    )
    from controlplane.datasets.versioning import REMOVAL_LEASE
    from controlplane.storage import object_store
    from workers.storage import StorageError

    version, (upload,) = _start(dataset, team.engineer, b"x")
    store = object_store()

    def unreachable(*args, **kwargs):
        raise StorageError("connection refused")

    monkeypatch.setattr(store, "multipart_abort", unreachable)
    with pytest.raises(DatasetError) as refused:
        dataset_version_abort(version=version, actor=team.engineer)
    assert refused.value.status == 503
    assert DatasetVersion.objects.get(pk=version.pk).state == "removing"
    monkeypatch.undo()
    later = timezone.now() + REMOVAL_LEASE + timedelta(seconds=1)
    assert dataset_uploads_reap(now=later) == [version.pk]
    assert list(store.multipart_list()) == []
    assert _removal(version.pk).payload["reason"] == "aborted by the uploader"


def test_a_store_outage_during_complete_keeps_the_upload_for_a_retry(team, dataset, monkeypatch):
    """A network failure is not the client's fault: its parts stay, the same request
    succeeds later. (A refusal of the parts themselves still removes the version.)"""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import DatasetError, dataset_version_complete
    from controlplane.storage import object_store
    from workers.storage import StorageError

    data = b"kept through an outage"
    version, (upload,) = _start(dataset, team.engineer, data)
    parts = _send(upload, data)
    store = object_store()
    original = store.multipart_complete

    def unreachable(*args, **kwargs):
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as error:
            raise StorageError("complete multipart upload at S3 endpoint failed") from error

    monkeypatch.setattr(store, "multipart_complete", unreachable)
    with pytest.raises(DatasetError) as outage:
        dataset_version_complete(version=version, actor=team.engineer, parts=parts)
    assert outage.value.status == 503
    assert DatasetVersion.objects.get(pk=version.pk).state == "uploading"
    monkeypatch.setattr(store, "multipart_complete", original)
    again = DatasetVersion.objects.get(pk=version.pk)
    ready = dataset_version_complete(version=again, actor=team.engineer, parts=parts)
    assert ready.state == "ready" and store.get_bytes(upload.file.object_key) == data


def test_the_admin_cannot_delete_or_renumber_versions(team, dataset, client, make_ready_version):
    """The admin's forms would bypass the services: no audit, numbers edited, objects
    orphaned. Staff get read-only views."""
    from django.contrib.auth.models import User

    from controlplane.datasets.models import DatasetVersion

    version = make_ready_version(dataset, team.engineer, {"a.txt": b"kept"})
    root = User.objects.create_superuser("root", "root@example.org", "pw-for-tests-1")
    client.force_login(root)
    base = "/admin/datasets/datasetversion"
    assert client.get(f"{base}/{version.pk}/change/").status_code == 200  # can look
    assert client.post(f"{base}/{version.pk}/delete/", {"post": "yes"}).status_code == 403
    edited = client.post(f"{base}/{version.pk}/change/", {"number": 1, "state": "uploading"})
    assert edited.status_code == 403
    assert client.get("/admin/uploads/upload/add/").status_code == 403
    version.refresh_from_db()
    assert DatasetVersion.objects.filter(pk=version.pk, state="ready", number=1).exists()


def test_a_malformed_parts_list_is_a_400_that_keeps_the_upload(team, dataset):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import DatasetError, dataset_version_complete

    data = b"one part"
    version, (upload,) = _start(dataset, team.engineer, data)
    parts = _send(upload, data)
    ((number, etag),) = parts[upload.file.pk]
    for wrong in ([(1, etag), (1, etag)], [(1, etag), (2, etag)], [(2, etag)]):
        with pytest.raises(DatasetError) as refused:
            dataset_version_complete(
                version=version, actor=team.engineer, parts={upload.file.pk: wrong}
            )
        assert refused.value.status == 400 and "needs parts 1 to 1" in str(refused.value)
        assert DatasetVersion.objects.get(pk=version.pk).state == "uploading"
    ready = dataset_version_complete(version=version, actor=team.engineer, parts=parts)
    assert ready.state == "ready"
