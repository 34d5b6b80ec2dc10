import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

pytestmark = pytest.mark.django_db


def _url(team):
    return f"/api/v1/projects/{team.project.pk}/uploads/"


def test_upload_lands_in_the_store_with_its_sha256(team, api):
    import hashlib

    from controlplane.storage import object_store

    data = b"to be or not to be\n" * 1000
    response = api(team.engineer).post(
        _url(team), {"file": SimpleUploadedFile("hamlet.txt", data)}, format="multipart"
    )
    assert response.status_code == 201
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size"] == len(data)
    assert body["object_key"].startswith(f"projects/{team.project.pk}/uploads/")
    assert object_store().get_bytes(body["object_key"]) == data


def test_users_filename_never_becomes_the_key(team, api):
    response = api(team.engineer).post(
        _url(team),
        {"file": SimpleUploadedFile("../../etc/passwd", b"root:x:0:0\n")},
        format="multipart",
    )
    body = response.json()
    assert response.status_code == 201
    assert ".." not in body["object_key"] and body["filename"] == "passwd"


def test_oversized_upload_is_refused_and_leaves_nothing(team, api, settings):
    from controlplane.storage import object_store
    from controlplane.uploads.models import Upload

    settings.UPLOAD_MAX_BYTES = 1000
    response = api(team.engineer).post(
        _url(team), {"file": SimpleUploadedFile("big.bin", b"x" * 5000)}, format="multipart"
    )
    assert response.status_code == 413
    assert (
        "limited to 1000" in response.json()["error"]["message"]
        or "limit is 1000" in response.json()["error"]["message"]
    )
    assert not Upload.objects.exists()
    assert not list(object_store().list(f"projects/{team.project.pk}/uploads/"))


def test_empty_and_missing_files_are_field_errors(team, api):
    client = api(team.engineer)
    assert (
        client.post(
            _url(team), {"file": SimpleUploadedFile("e.txt", b"")}, format="multipart"
        ).status_code
        == 400
    )
    response = client.post(_url(team), {}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()["error"]["fields"]


def test_failed_database_write_removes_the_object(team, monkeypatch):
    from controlplane.storage import object_store
    from controlplane.uploads import services
    from controlplane.uploads.models import Upload

    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "audit_append", broken)
    with pytest.raises(RuntimeError):
        services.upload_create(
            project=team.project,
            actor=team.engineer,
            stream=io.BytesIO(b"abc"),
            filename="a.txt",
            size=3,
        )
    assert not Upload.objects.exists()
    assert not list(object_store().list(f"projects/{team.project.pk}/uploads/"))


def test_upload_from_the_dashboard(team, client):
    from controlplane.uploads.models import Upload

    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/uploads/",
        {"file": SimpleUploadedFile("a.csv", b"a,b\n1,2\n")},
    )
    assert response.status_code == 302
    assert Upload.objects.get().filename == "a.csv"


def _nothing_stored(team):
    from controlplane.storage import object_store
    from controlplane.uploads.models import Upload

    assert not Upload.objects.exists()
    assert not list(object_store().list(f"projects/{team.project.pk}/uploads/"))


def test_two_files_under_one_field_are_refused(team, api):
    response = api(team.engineer).post(
        _url(team),
        {"file": [SimpleUploadedFile("a.txt", b"first"), SimpleUploadedFile("b.txt", b"second")]},
        format="multipart",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "exactly one file" in str(error["fields"]["file"]) and "got 2" in str(error["fields"])
    _nothing_stored(team)


def test_a_file_under_another_field_is_refused(team, api):
    response = api(team.engineer).post(
        _url(team),
        {"file": SimpleUploadedFile("a.txt", b"1"), "other": SimpleUploadedFile("b.txt", b"2")},
        format="multipart",
    )
    assert response.status_code == 400 and "other" in str(response.json()["error"]["fields"])
    _nothing_stored(team)


def test_two_files_from_the_dashboard_are_refused(team, client):
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/uploads/",
        {"file": [SimpleUploadedFile("a.csv", b"1\n"), SimpleUploadedFile("b.csv", b"2\n")]},
    )
    assert response.status_code == 400
    assert "exactly one file" in response.content.decode()
    _nothing_stored(team)


def test_unnormalised_file_names_are_refused(team, api):
    response = api(team.engineer).post(
        _url(team), {"file": SimpleUploadedFile("cafe\u0301.txt", b"1")}, format="multipart"
    )
    assert response.status_code == 400
    assert "U+0301 COMBINING ACUTE ACCENT" in str(response.json()["error"]["fields"]["file"])
    _nothing_stored(team)


def test_a_bidi_override_never_reaches_a_stored_name(team, api):
    """Django's multipart parser drops non-printable characters from file names before we
    see them; the service refuses them from any other caller."""
    from controlplane.uploads.services import UploadError, upload_create

    response = api(team.engineer).post(
        _url(team), {"file": SimpleUploadedFile("\u202egnp.exe", b"MZ")}, format="multipart"
    )
    assert response.status_code in (201, 400)
    if response.status_code == 201:
        assert response.json()["filename"] == "gnp.exe"
    with pytest.raises(UploadError, match="U\\+202E RIGHT-TO-LEFT OVERRIDE"):
        upload_create(
            project=team.project,
            actor=team.engineer,
            stream=io.BytesIO(b"MZ"),
            filename="\u202egnp.exe",
            size=2,
        )


def test_an_upload_whose_process_died_before_its_row_is_reaped(team, monkeypatch):
    """Killed between the store write and the commit: the cleanup never ran. The intent
    recorded before the write lets the reaper find and remove the object."""
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.audit.models import AuditEvent
    from controlplane.storage import object_store
    from controlplane.uploads import services
    from controlplane.uploads.models import PendingUpload, Upload

    def killed(**kwargs):
        raise SystemExit("SIGKILL stand-in")

    # The process "dies" in the row's transaction, and its cleanup cannot reach the store.
    monkeypatch.setattr(services, "audit_append", killed)
    monkeypatch.setattr(services, "_undo_pending", lambda intent: None)
    with pytest.raises(SystemExit):
        services.upload_create(
            project=team.project,
            actor=team.engineer,
            stream=io.BytesIO(b"orphan bytes"),
            filename="a.txt",
            size=12,
        )
    monkeypatch.undo()
    (intent,) = PendingUpload.objects.all()
    assert object_store().exists(intent.object_key) and not Upload.objects.exists()

    assert services.upload_orphans_reap() == []  # could still be a live upload
    later = timezone.now() + services.PENDING_UPLOAD_MAX_AGE + timedelta(seconds=1)
    assert services.upload_orphans_reap(now=later) == [intent.object_key]
    assert not object_store().exists(intent.object_key)
    assert not PendingUpload.objects.exists()
    event = AuditEvent.objects.get(action="upload.orphan_removed")
    assert event.payload["object_key"] == intent.object_key


def test_a_completed_upload_leaves_no_intent(team, api):
    from controlplane.uploads.models import PendingUpload

    response = api(team.engineer).post(
        _url(team), {"file": SimpleUploadedFile("a.txt", b"abc")}, format="multipart"
    )
    assert response.status_code == 201
    assert not PendingUpload.objects.exists()


@pytest.mark.parametrize("content_type", ["text/" + "x" * 200, "text/plain\x7f", "tëxt/plain"])
def test_bad_content_types_are_field_errors_not_500s(team, api, content_type):
    response = api(team.engineer).post(
        _url(team),
        {"file": SimpleUploadedFile("a.txt", b"abc", content_type=content_type)},
        format="multipart",
    )
    assert response.status_code == 400
    assert "content type" in str(response.json()["error"]["fields"]["file"])
    _nothing_stored(team)


def test_a_store_outage_is_a_503_and_leaves_nothing(team, api, monkeypatch):
    from controlplane.storage import object_store
    from controlplane.uploads.models import PendingUpload
    from workers.storage import StorageError

    def unreachable(*args, **kwargs):
        raise StorageError("put at S3 endpoint minio:9000 failed: connection refused")

    monkeypatch.setattr(object_store(), "put_stream", unreachable)
    response = api(team.engineer).post(
        _url(team), {"file": SimpleUploadedFile("a.txt", b"abc")}, format="multipart"
    )
    assert response.status_code == 503 and response.json()["error"]["status"] == 503
    monkeypatch.undo()
    _nothing_stored(team)
    assert not PendingUpload.objects.exists()
