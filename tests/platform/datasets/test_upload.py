"""Dataset versions arrive by presigned multipart upload and become ready only when verified."""

import hashlib
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db

PART = 5 * 1024 * 1024  # S3's smallest part


@pytest.fixture
def dataset(team, api):
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/datasets/",
        {
            "name": "Plays",
            "slug": "plays",
            "kind": "text",
            "license": "public domain",
            "source": "Project Gutenberg",
            "subject_field": "author_id",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def _put_parts(client, upload: dict, data: bytes) -> list[dict]:
    """What a browser or API client does: PUT each slice to its presigned URL."""
    parts = []
    for part in upload["parts"]:
        start = (part["part_number"] - 1) * upload["part_size"]
        body = data[start : start + upload["part_size"]]
        url = urlsplit(part["url"])
        response = client.generic("PUT", f"{url.path}?{url.query}", body, content_type="")
        assert response.status_code == 200, response.content
        parts.append({"part_number": part["part_number"], "etag": response["ETag"].strip('"')})
    return parts


def _start(client, project, dataset, files, **extra):
    return client.post(
        f"/api/v1/projects/{project.pk}/datasets/{dataset['id']}/versions/",
        {"files": files, **extra},
        format="json",
    )


def test_multipart_upload_becomes_a_ready_version(team, api, dataset, client):
    data = bytes(range(256)) * (PART // 256) + b"tail of the file\n" * 1000
    engineer = api(team.engineer)
    started = _start(
        engineer,
        team.project,
        dataset,
        [
            {
                "name": "../../etc/plays.jsonl",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
        part_size=PART,
    )
    assert started.status_code == 201, started.content
    body = started.json()
    assert body["state"] == "uploading" and body["number"] == 1
    (upload,) = body["uploads"]
    assert len(upload["parts"]) == 2 and upload["name"] == "plays.jsonl"
    assert "etc" not in body["files"][0]["object_key"]
    parts = _put_parts(client, upload, data)
    done = engineer.post(
        f"/api/v1/projects/{team.project.pk}/datasets/{dataset['id']}/versions/1/complete/",
        {"files": [{"file_id": upload["file_id"], "parts": parts}]},
        format="json",
    )
    assert done.status_code == 200, done.content
    assert done.json()["state"] == "ready" and done.json()["byte_count"] == len(data)

    from controlplane.audit.models import AuditEvent
    from controlplane.storage import object_store

    assert object_store().get_bytes(done.json()["files"][0]["object_key"]) == data
    assert AuditEvent.objects.filter(
        artifact_type="datasetversion", action="dataset_version.uploaded"
    ).exists()


def test_wrong_checksum_removes_the_version_and_its_bytes(team, api, dataset, client):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.storage import object_store

    data = b"x" * 1000
    engineer = api(team.engineer)
    body = _start(
        engineer, team.project, dataset, [{"name": "a.txt", "size": 1000, "sha256": "0" * 64}]
    ).json()
    parts = _put_parts(client, body["uploads"][0], data)
    done = engineer.post(
        f"/api/v1/projects/{team.project.pk}/datasets/{dataset['id']}/versions/1/complete/",
        {"files": [{"file_id": body["uploads"][0]["file_id"], "parts": parts}]},
        format="json",
    )
    assert done.status_code == 400 and "sha256" in done.json()["error"]["message"]
    assert not DatasetVersion.objects.exists()
    assert list(object_store().list(f"projects/{team.project.pk}/datasets/")) == []


def test_abort_and_abandoned_uploads_leave_nothing(team, api, dataset, client):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_uploads_reap
    from controlplane.storage import object_store

    engineer = api(team.engineer)
    declared = [{"name": "a.txt", "size": 10, "sha256": hashlib.sha256(b"0123456789").hexdigest()}]
    first = _start(engineer, team.project, dataset, declared).json()
    _put_parts(client, first["uploads"][0], b"0123456789")
    aborted = engineer.delete(
        f"/api/v1/projects/{team.project.pk}/datasets/{dataset['id']}/versions/1/"
    )
    assert aborted.status_code == 204
    second = _start(engineer, team.project, dataset, declared).json()
    _put_parts(client, second["uploads"][0], b"0123456789")
    assert dataset_uploads_reap() == []  # not expired yet
    assert dataset_uploads_reap(now=timezone.now() + timedelta(days=2)) == [second["id"]]
    assert not DatasetVersion.objects.exists()
    assert list(object_store().list(f"projects/{team.project.pk}/datasets/")) == []


def test_bad_declarations_are_field_errors(team, api, dataset, settings):
    engineer = api(team.engineer)
    sha = "a" * 64
    cases = [
        ([], "files"),
        ([{"name": "a", "size": 0, "sha256": sha}], "files"),
        ([{"name": "a", "size": 1, "sha256": "nothex"}], "files"),
        ([{"name": "a", "size": 1, "sha256": sha, "path": "/x"}], "files"),
        (
            [{"name": "a", "size": 1, "sha256": sha}, {"name": "a", "size": 1, "sha256": sha}],
            "files",
        ),
    ]
    for files, field in cases:
        response = _start(engineer, team.project, dataset, files)
        fields = response.json()["error"]["fields"]  # nested errors are dotted: files.0.size
        assert response.status_code == 400, files
        assert any(k == field or k.startswith(field + ".") for k in fields), (files, fields)
    settings.UPLOAD_MAX_BYTES = 100
    too_big = _start(engineer, team.project, dataset, [{"name": "a", "size": 101, "sha256": sha}])
    assert too_big.status_code == 413


def test_completing_again_answers_the_same_and_viewer_cannot_upload(team, api, dataset, client):
    data = b"hello\n"
    engineer = api(team.engineer)
    body = _start(
        engineer,
        team.project,
        dataset,
        [{"name": "a.txt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
    ).json()
    parts = _put_parts(client, body["uploads"][0], data)
    url = f"/api/v1/projects/{team.project.pk}/datasets/{dataset['id']}/versions/1/complete/"
    payload = {"files": [{"file_id": body["uploads"][0]["file_id"], "parts": parts}]}
    first = engineer.post(url, payload, format="json")
    assert first.status_code == 200
    # A client retrying after a timeout gets the same answer; other parts are a conflict.
    again = engineer.post(url, payload, format="json")
    assert again.status_code == 200 and again.json() == first.json()
    other = {
        "files": [
            {
                "file_id": body["uploads"][0]["file_id"],
                "parts": [{"part_number": 1, "etag": "f" * 64}],
            }
        ]
    }
    conflict = engineer.post(url, other, format="json")
    assert conflict.status_code == 409 and conflict.json()["error"]["status"] == 409
    viewer = api(team.viewer)
    assert (
        _start(
            viewer, team.project, dataset, [{"name": "b", "size": 1, "sha256": "a" * 64}]
        ).status_code
        == 403
    )
    assert (
        viewer.get(
            f"/api/v1/projects/{team.project.pk}/datasets/{dataset['id']}/versions/1/"
        ).status_code
        == 200
    )
    outsider = api(team.outsider)
    assert (
        outsider.get(
            f"/api/v1/projects/{team.project.pk}/datasets/{dataset['id']}/versions/1/"
        ).status_code
        == 404
    )
    assert (
        outsider.get(
            f"/api/v1/projects/{team.other_project.pk}/datasets/{dataset['id']}/"
        ).status_code
        == 404
    )


def test_dataset_slugs_are_unique_per_project(team, api, dataset):
    again = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/datasets/",
        {"name": "x", "slug": "plays", "kind": "text"},
        format="json",
    )
    assert again.status_code == 409
    wrong_kind = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/datasets/",
        {"name": "x", "slug": "y", "kind": "audio"},
        format="json",
    )
    assert wrong_kind.status_code == 400 and "kind" in wrong_kind.json()["error"]["fields"]
