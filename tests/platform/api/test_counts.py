"""Counts the schema declares as integers are integers on every endpoint, never null."""

import pytest

pytestmark = pytest.mark.django_db

PROJECT_COUNTS = ("member_count", "job_count", "running_job_count")


def test_project_counts_on_create_detail_and_patch(api, team):
    client = api(team.owner)
    created = client.post("/api/v1/projects/", {"name": "New", "slug": "new"}, format="json")
    assert [created.json()[k] for k in PROJECT_COUNTS] == [1, 0, 0]
    url = f"/api/v1/projects/{team.project.pk}/"
    for response in (client.get(url), client.patch(url, {"name": "Renamed"}, format="json")):
        assert response.status_code == 200
        assert [response.json()[k] for k in PROJECT_COUNTS] == [4, 0, 0]
        assert response.json()["my_role"] == "owner"


def test_dataset_version_count_on_create_and_detail(api, team, make_ready_version):
    from controlplane.datasets.models import Dataset

    client = api(team.engineer)
    url = f"/api/v1/projects/{team.project.pk}/datasets/"
    created = client.post(url, {"name": "D", "slug": "d", "kind": "text"}, format="json")
    assert created.status_code == 201 and created.json()["version_count"] == 0
    dataset = Dataset.objects.get(pk=created.json()["id"])
    make_ready_version(dataset, team.engineer, {"a.txt": b"hi\n"})
    assert client.get(f"{url}{dataset.pk}/").json()["version_count"] == 1
