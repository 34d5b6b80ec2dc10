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


def test_unknown_kind_names_the_kinds(api, team):
    response = _post(api, team, {"kind": "teleport", "params": {}})
    (message,) = response.json()["error"]["fields"]["kind"]
    assert message.startswith("unknown job kind 'teleport'") and "pretrain" in message


def test_job_list_filters_by_kind(api, team, upload):
    _post(api, team, {"kind": "inspect", "params": {"upload_id": upload.pk}})
    client = api(team.viewer)
    url = f"/api/v1/projects/{team.project.pk}/jobs/"
    assert client.get(url, {"kind": "inspect"}).json()["count"] == 1
    assert client.get(url, {"kind": "pretrain"}).json()["count"] == 0


def test_metrics_filter_by_key(api, team, upload):
    from django.utils import timezone

    from controlplane.jobs.models import Job, JobMetric

    now = timezone.now()

    job_id = _post(api, team, {"kind": "inspect", "params": {"upload_id": upload.pk}}).json()["id"]
    job = Job.objects.get(pk=job_id)
    JobMetric.objects.create(job=job, key="train/loss", step=1, value=2.0, recorded_at=now)
    JobMetric.objects.create(job=job, key="val/loss", step=1, value=3.0, recorded_at=now)
    url = f"/api/v1/projects/{team.project.pk}/jobs/{job_id}/metrics/"
    body = api(team.viewer).get(url, {"key": "val/loss"}).json()
    assert [m["key"] for m in body["results"]] == ["val/loss"]


def test_pipeline_cannot_name_a_file_on_the_worker(api, team):
    """toxicity.lexicon is a path the worker would read: /etc/passwd's words as a filter."""
    from controlplane.jobs.models import Job

    params = {"pipeline": {"stages": [{"toxicity": {"lexicon": "/etc/passwd"}}]}}
    response = _post(api, team, {"kind": "data_pipeline", "params": params})
    (message,) = response.json()["error"]["fields"]["params.pipeline"]
    assert "toxicity.lexicon" in message
    assert not Job.objects.exists()
