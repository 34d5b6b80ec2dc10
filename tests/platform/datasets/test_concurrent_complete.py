"""`complete` under concurrency: real threads, real PostgreSQL transactions.

The fault: two simultaneous `complete` calls with the same body (a client retrying after a
timeout) answered 200 and 400, and the 400 removed the version the 200 had acknowledged,
with no audit event, and the next upload got the same version number.
"""

import hashlib
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.threads import in_threads

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
]  # whole flows: make test runs them


@pytest.fixture
def slow_assembly(monkeypatch):
    """Every multipart_complete takes a moment, so requests really overlap while assembling.

    `assembling` is set once one has started.
    """
    from controlplane.storage import object_store

    store = object_store()
    original = store.multipart_complete
    assembling = threading.Event()

    def slow(key, upload_id, parts):
        assembling.set()
        time.sleep(0.5)
        return original(key, upload_id, parts)

    monkeypatch.setattr(store, "multipart_complete", slow)
    return assembling


@pytest.fixture
def upload(team):
    """A dataset with version 1 declared and its one part sent: ready to `complete`."""
    import io

    from controlplane.datasets.services import DeclaredFile, dataset_create, dataset_version_start
    from controlplane.storage import object_store

    data = b"one acknowledged version\n" * 100
    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    version, (part,) = dataset_version_start(
        dataset=dataset,
        actor=team.engineer,
        files=[DeclaredFile("plays.txt", len(data), hashlib.sha256(data).hexdigest())],
    )
    etag = object_store().upload_part(
        part.file.object_key, part.file.upload_id, 1, io.BytesIO(data), len(data)
    )

    class Upload:
        pass

    upload = Upload()
    upload.dataset, upload.version, upload.file, upload.data = dataset, version, part.file, data
    upload.url = (
        f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/{version.number}/"
    )
    upload.body = {
        "files": [{"file_id": part.file.pk, "parts": [{"part_number": 1, "etag": etag}]}]
    }
    return upload


def _removals(version_id):
    from controlplane.audit.models import AuditEvent

    return AuditEvent.objects.filter(
        artifact_type="datasetversion",
        artifact_id=str(version_id),
        action="dataset_version.removed",
    )


def test_two_simultaneous_completes_never_remove_the_acknowledged_version(
    team, api, upload, slow_assembly
):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.storage import object_store

    clients = [api(team.engineer), api(team.engineer)]
    first, second = in_threads(
        *(lambda c=c: c.post(upload.url + "complete/", upload.body, format="json") for c in clients)
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses in ([200, 200], [200, 409]), (first.content, second.content)
    for response in (first, second):
        if response.status_code == 409:
            error = response.json()["error"]
            assert error["status"] == 409 and "being completed" in error["message"]
    version = DatasetVersion.objects.get(pk=upload.version.pk)
    assert version.state == "ready"
    assert object_store().get_bytes(upload.file.object_key) == upload.data
    assert not _removals(version.pk).exists()
    # A retry after both answered is the same 200, with the same body.
    ok = next(r for r in (first, second) if r.status_code == 200)
    again = clients[0].post(upload.url + "complete/", upload.body, format="json")
    assert again.status_code == 200 and again.json() == ok.json()
    assert clients[0].get(upload.url).json()["state"] == "ready"


def test_the_reaper_cannot_take_a_version_being_completed(team, api, upload, slow_assembly):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_uploads_reap
    from controlplane.storage import object_store

    # The upload's deadline has just passed: the reaper considers it abandoned...
    DatasetVersion.objects.filter(pk=upload.version.pk).update(
        upload_expires_at=timezone.now() - timedelta(seconds=1)
    )
    client = api(team.engineer)

    def reap_once_assembling():
        assert slow_assembly.wait(timeout=10)
        return dataset_uploads_reap()

    # ...while a `complete` (sent just in time) is assembling it.
    completed, reaped = in_threads(
        lambda: client.post(upload.url + "complete/", upload.body, format="json"),
        reap_once_assembling,
    )
    assert completed.status_code == 200, completed.content
    assert reaped == []
    assert DatasetVersion.objects.get(pk=upload.version.pk).state == "ready"
    assert object_store().get_bytes(upload.file.object_key) == upload.data
    assert not _removals(upload.version.pk).exists()


def test_a_complete_after_the_reaper_claimed_the_version_is_a_conflict(team, api, upload):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_uploads_reap
    from controlplane.storage import object_store

    DatasetVersion.objects.filter(pk=upload.version.pk).update(
        upload_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert dataset_uploads_reap() == [upload.version.pk]
    late = api(team.engineer).post(upload.url + "complete/", upload.body, format="json")
    assert late.status_code == 404  # the version is gone, and says so in the JSON shape
    assert late.json()["error"]["status"] == 404
    assert not object_store().exists(upload.file.object_key)
    (removal,) = _removals(upload.version.pk)
    assert removal.actor_id is None and "abandoned" in removal.payload["reason"]


def test_complete_racing_the_reaper_leaves_one_consistent_outcome(team, api, upload):
    """No forced order: whichever claims first wins, and the other changes nothing."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_uploads_reap
    from controlplane.storage import object_store

    DatasetVersion.objects.filter(pk=upload.version.pk).update(
        upload_expires_at=timezone.now() - timedelta(seconds=1)
    )
    client = api(team.engineer)
    completed, reaped = in_threads(
        lambda: client.post(upload.url + "complete/", upload.body, format="json"),
        dataset_uploads_reap,
    )
    version = DatasetVersion.objects.filter(pk=upload.version.pk).first()
    if completed.status_code == 200:
        assert reaped == [] and version.state == "ready"
        assert object_store().get_bytes(upload.file.object_key) == upload.data
        assert not _removals(upload.version.pk).exists()
    else:
        assert completed.status_code in (404, 409), completed.content
        assert reaped == [upload.version.pk] and version is None
        assert not object_store().exists(upload.file.object_key)
        assert _removals(upload.version.pk).count() == 1


def test_a_complete_that_died_is_reaped_after_its_lease(team, upload):
    """The request that claimed the version died: the reaper removes it, audited."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_uploads_reap
    from controlplane.datasets.upload import ASSEMBLY_LEASE

    DatasetVersion.objects.filter(pk=upload.version.pk).update(
        state="assembling", upload_expires_at=timezone.now() + ASSEMBLY_LEASE
    )
    assert dataset_uploads_reap() == []  # still within its lease
    later = timezone.now() + ASSEMBLY_LEASE + timedelta(seconds=1)
    assert dataset_uploads_reap(now=later) == [upload.version.pk]
    (removal,) = _removals(upload.version.pk)
    assert "interrupted" in removal.payload["reason"]


def test_a_complete_whose_version_the_reaper_removes_midway_is_a_404(
    team, api, upload, monkeypatch
):
    """The reaper may remove the version between the request's lookup and its check of the
    files: that is the 404 of a removed version, not a 400 about the files."""
    import controlplane.datasets.api as datasets_api
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_uploads_reap

    files_of = datasets_api.version_file_ids

    def reaped_first(version):
        DatasetVersion.objects.filter(pk=version.pk).update(
            upload_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert dataset_uploads_reap() == [version.pk]
        return files_of(version)

    monkeypatch.setattr(datasets_api, "version_file_ids", reaped_first)
    late = api(team.engineer).post(upload.url + "complete/", upload.body, format="json")
    assert late.status_code == 404, late.content
    assert "upload expired" in late.json()["error"]["message"]
