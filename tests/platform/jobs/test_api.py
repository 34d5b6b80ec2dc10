import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def upload(team, make_upload):
    return make_upload(team.project, team.engineer, b'{"text": "hi"}\n')


def _post(api, team, body):
    return api(team.engineer).post(f"/api/v1/projects/{team.project.pk}/jobs/", body, format="json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "teleport", "params": {}}, "kind"),
        ({"kind": "inspect", "params": {}}, "params.upload_id"),
        ({"kind": "inspect", "params": {"upload_id": "7"}}, "params.upload_id"),
        ({"kind": "inspect", "params": {"upload_id": 10**9}}, "params.upload_id"),
        ({"kind": "inspect", "params": {"upload_id": None, "colour": "red"}}, "params.colour"),
        ({"kind": "inspect", "params": []}, "params"),
    ],
)
def test_bad_job_requests_are_field_errors_and_create_nothing(api, team, upload, body, field):
    from controlplane.jobs.models import Job

    response = _post(api, team, body)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not Job.objects.exists()


def test_out_of_range_parameter_names_the_range(api, team, upload):
    response = _post(
        api, team, {"kind": "inspect", "params": {"upload_id": upload.pk, "preview_records": 500}}
    )
    assert response.json()["error"]["fields"]["params.preview_records"] == [
        "must be between 1 and 50"
    ]


def test_unknown_top_level_field_is_rejected(api, team, upload):
    response = _post(
        api, team, {"kind": "inspect", "params": {"upload_id": upload.pk}, "priority": 9}
    )
    assert response.status_code == 400 and response.json()["error"]["fields"] == {
        "priority": ["unknown field"]
    }


def test_job_list_filters_by_state(api, team, upload):
    _post(api, team, {"kind": "inspect", "params": {"upload_id": upload.pk}})
    client = api(team.viewer)
    url = f"/api/v1/projects/{team.project.pk}/jobs/"
    assert client.get(url, {"state": "queued"}).json()["count"] == 1
    assert client.get(url, {"state": "running"}).json()["count"] == 0
    assert client.get(url, {"state": "sleeping"}).status_code == 400
