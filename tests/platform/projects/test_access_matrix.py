"""Every API endpoint and page checks the caller's role; other projects' data stays invisible."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def _urls(team, upload_id: int, job_id: int) -> list[tuple[str, str, dict | None]]:
    p = team.project.pk
    return [
        ("get", f"/api/v1/projects/{p}/", None),
        ("patch", f"/api/v1/projects/{p}/", {"name": "x"}),
        ("get", f"/api/v1/projects/{p}/members/", None),
        ("post", f"/api/v1/projects/{p}/members/", {"username": "outsider", "role": "viewer"}),
        ("patch", f"/api/v1/projects/{p}/members/{team.viewer.pk}/", {"role": "engineer"}),
        ("delete", f"/api/v1/projects/{p}/members/{team.viewer.pk}/", None),
        ("get", f"/api/v1/projects/{p}/uploads/", None),
        ("get", f"/api/v1/projects/{p}/uploads/{upload_id}/", None),
        ("get", f"/api/v1/projects/{p}/jobs/", None),
        (
            "post",
            f"/api/v1/projects/{p}/jobs/",
            {"kind": "inspect", "params": {"upload_id": upload_id}},
        ),
        ("get", f"/api/v1/projects/{p}/jobs/{job_id}/", None),
        ("post", f"/api/v1/projects/{p}/jobs/{job_id}/cancel/", None),
        ("get", f"/api/v1/projects/{p}/jobs/{job_id}/events/", None),
        ("get", f"/api/v1/projects/{p}/jobs/{job_id}/metrics/", None),
        ("get", f"/api/v1/projects/{p}/audit/", None),
        ("get", f"/api/v1/projects/{p}/audit/verify/", None),
        ("get", f"/api/v1/projects/{p}/datasets/", None),
        ("post", f"/api/v1/projects/{p}/datasets/", {"name": "x", "slug": "x", "kind": "text"}),
        ("get", f"/api/v1/projects/{p}/datasets/{team.dataset_id}/", None),
        ("get", f"/api/v1/projects/{p}/datasets/{team.dataset_id}/versions/", None),
        (
            "post",
            f"/api/v1/projects/{p}/datasets/{team.dataset_id}/versions/",
            {"files": [{"name": "a", "size": 1, "sha256": "a" * 64}]},
        ),
        ("get", f"/api/v1/projects/{p}/datasets/{team.dataset_id}/versions/1/", None),
        ("delete", f"/api/v1/projects/{p}/datasets/{team.dataset_id}/versions/1/", None),
        (
            "post",
            f"/api/v1/projects/{p}/datasets/{team.dataset_id}/versions/1/complete/",
            {"files": [{"file_id": 1, "parts": [{"part_number": 1, "etag": "x"}]}]},
        ),
    ]


@pytest.fixture
def upload_and_job(team, make_upload):
    from controlplane.datasets.services import DeclaredFile, dataset_create, dataset_version_start
    from controlplane.jobs.services import job_create

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="D", slug="d", kind="text"
    )
    dataset_version_start(
        dataset=dataset, actor=team.engineer, files=[DeclaredFile("a", 1, "a" * 64)]
    )
    team.dataset_id = dataset.pk
    upload = make_upload(team.project, team.engineer, b"hello\nworld\n")
    job = job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )
    return upload, job


def test_member_of_another_project_gets_404_everywhere(team, api, upload_and_job):
    upload, job = upload_and_job
    client = api(team.outsider)
    for method, url, body in _urls(team, upload.pk, job.pk):
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.status_code)


def test_member_of_the_organisation_but_not_the_project_gets_404_everywhere(
    team, api, upload_and_job, make_user
):
    """An organisation membership alone opens none of its projects (the project role
    decides inside the wall; tests/platform/orgs/test_org_isolation.py walks the wall)."""
    from controlplane.orgs.services import org_member_add

    upload, job = upload_and_job
    colleague = make_user("colleague")
    org_member_add(org=team.project.organisation, user=colleague, role="admin", actor=team.owner)
    client = api(colleague)
    for method, url, body in _urls(team, upload.pk, job.pk):
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.status_code)


def test_anonymous_gets_401_everywhere(team, api, upload_and_job):
    upload, job = upload_and_job
    client = api(None)
    for method, url, body in _urls(team, upload.pk, job.pk):
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 401, (method, url, response.status_code)


def test_viewer_reads_but_cannot_write(team, api, upload_and_job):
    upload, job = upload_and_job
    client = api(team.viewer)
    for method, url, body in _urls(team, upload.pk, job.pk):
        response = getattr(client, method)(url, body, format="json")
        expected = 200 if method == "get" else 403
        assert response.status_code == expected, (method, url, response.status_code)


def test_engineer_runs_jobs_but_cannot_manage_members(team, api, upload_and_job):
    upload, job = upload_and_job
    client = api(team.engineer)
    assert (
        client.post(
            f"/api/v1/projects/{team.project.pk}/jobs/",
            {"kind": "inspect", "params": {"upload_id": upload.pk}},
            format="json",
        ).status_code
        == 201
    )
    response = client.post(
        f"/api/v1/projects/{team.project.pk}/members/", {"username": "outsider", "role": "viewer"}
    )
    assert response.status_code == 403


def test_project_list_shows_only_own_projects(team, api):
    slugs = {p["slug"] for p in api(team.outsider).get("/api/v1/projects/").json()["results"]}
    assert slugs == {"beta"}
    slugs = {p["slug"] for p in api(team.admin).get("/api/v1/projects/").json()["results"]}
    assert slugs == {"alpha", "beta"}


def test_upload_of_another_project_cannot_be_used_in_a_job(team, api, make_upload):
    foreign = make_upload(team.other_project, team.outsider, b"secret\n")
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "inspect", "params": {"upload_id": foreign.pk}},
        format="json",
    )
    assert response.status_code == 400
    assert "no upload" in response.json()["error"]["fields"]["params.upload_id"][0]


def test_pages_hide_other_projects(team, client, upload_and_job):
    upload, job = upload_and_job
    client.force_login(team.outsider)
    p = team.project.pk
    for url in [
        f"/projects/{p}/",
        f"/projects/{p}/jobs/",
        f"/projects/{p}/jobs/{job.pk}/",
        f"/projects/{p}/members/",
        f"/projects/{p}/audit/",
        f"/projects/{p}/uploads/{upload.pk}/inspect/",
    ]:
        assert client.get(url).status_code == 404, url
    assert client.post(f"/projects/{p}/jobs/{job.pk}/cancel/").status_code == 404


def test_viewer_cannot_cancel_or_upload_from_pages(team, client, upload_and_job):
    upload, job = upload_and_job
    client.force_login(team.viewer)
    p = team.project.pk
    assert client.get(f"/projects/{p}/jobs/{job.pk}/").status_code == 200
    assert client.post(f"/projects/{p}/jobs/{job.pk}/cancel/").status_code == 403
    assert (
        client.post(
            f"/projects/{p}/members/", {"username": "outsider", "role": "owner"}
        ).status_code
        == 403
    )
