"""Dataset pages: engineers create datasets and see versions; others see only their projects."""

import hashlib

import pytest

pytestmark = pytest.mark.django_db


def _version(team):
    from controlplane.datasets.services import DeclaredFile, dataset_create, dataset_version_start

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    data = b"hello\n"
    version, _ = dataset_version_start(
        dataset=dataset,
        actor=team.engineer,
        files=[DeclaredFile("a.txt", len(data), hashlib.sha256(data).hexdigest())],
    )
    return dataset, version


def test_engineer_creates_a_dataset_from_the_page(team, client):
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/datasets/",
        {"name": "Plays", "slug": "plays", "kind": "text", "license": "CC0"},
    )
    from controlplane.datasets.models import Dataset

    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/datasets/{dataset.pk}/")
    page = client.get(response["Location"]).content.decode()
    assert "Upload a new version" in page and "dataset-upload.js" in page and "CC0" in page


def test_viewer_sees_versions_but_cannot_create(team, client):
    dataset, version = _version(team)
    client.force_login(team.viewer)
    assert (
        "New dataset" not in client.get(f"/projects/{team.project.pk}/datasets/").content.decode()
    )
    assert (
        client.post(
            f"/projects/{team.project.pk}/datasets/", {"name": "x", "slug": "x", "kind": "text"}
        ).status_code
        == 404
    )
    detail = client.get(f"/projects/{team.project.pk}/datasets/{dataset.pk}/").content.decode()
    assert "v1" in detail and "uploading" in detail and "Upload a new version" not in detail
    page = client.get(f"/projects/{team.project.pk}/datasets/{dataset.pk}/v1/").content.decode()
    assert "a.txt" in page and hashlib.sha256(b"hello\n").hexdigest() in page


def test_outsider_gets_404_on_every_dataset_page(team, client):
    dataset, _ = _version(team)
    client.force_login(team.outsider)
    for url in (
        f"/projects/{team.project.pk}/datasets/",
        f"/projects/{team.project.pk}/datasets/{dataset.pk}/",
        f"/projects/{team.project.pk}/datasets/{dataset.pk}/v1/",
        f"/projects/{team.other_project.pk}/datasets/{dataset.pk}/",
    ):
        assert client.get(url).status_code == 404, url
