"""List endpoints run a fixed number of queries, whatever the page size."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db


def _queries(client, url, page_size) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, {"page_size": page_size})
    assert response.status_code == 200
    return len(captured)


def test_list_endpoints_do_not_grow_with_page_size(team, api, make_upload):
    from controlplane.jobs.services import job_create
    from controlplane.projects.services import project_create

    for i in range(12):
        project_create(name=f"P{i}", slug=f"proj-{i}", actor=team.owner)
    upload = make_upload(team.project, team.engineer, b"a\n")
    for _ in range(12):
        job_create(
            project=team.project,
            kind="inspect",
            params={"upload_id": upload.pk},
            actor=team.engineer,
        )
    client = api(team.owner)
    p = team.project.pk
    client.get("/api/v1/projects/")  # the token's first use records last_used_at once
    for url in [
        "/api/v1/projects/",
        f"/api/v1/projects/{p}/jobs/",
        f"/api/v1/projects/{p}/members/",
        f"/api/v1/projects/{p}/uploads/",
        f"/api/v1/projects/{p}/audit/",
    ]:
        assert _queries(client, url, 2) == _queries(client, url, 10), url
