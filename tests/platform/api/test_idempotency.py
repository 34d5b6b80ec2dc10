"""Idempotency-Key on the POSTs that create jobs, dataset versions and API tokens (issue 11:
"a client retrying on 500 creates duplicates")."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import pytest
import yaml
from django.core.management import call_command
from django.utils import timezone

pytestmark = pytest.mark.django_db


@pytest.fixture
def upload(team, make_upload):
    return make_upload(team.project, team.engineer, b"a\nb\n")


# A bearer token may create tokens only with tokens:write.
TOKEN_MAKER = ["api:read", "api:write", "tokens:write"]


def _jobs_url(team):
    return f"/api/v1/projects/{team.project.pk}/jobs/"


def _post(client, url, body, key):
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(url, body, format="json", headers=headers)


def _audit_count(action):
    from controlplane.audit.models import AuditEvent

    return AuditEvent.objects.filter(action=action).count()


def test_a_retried_job_post_gets_the_first_response_and_creates_nothing(api, team, upload):
    from controlplane.jobs.models import Job, JobDispatch

    client = api(team.engineer)
    body = {"kind": "inspect", "params": {"upload_id": upload.pk}}
    first = _post(client, _jobs_url(team), body, "job-7f3a")
    retry = _post(client, _jobs_url(team), body, "job-7f3a")
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() and retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert Job.objects.count() == 1 and JobDispatch.objects.count() == 1
    assert _audit_count("job.created") == 1


def test_the_body_is_compared_as_json_not_as_bytes(api, team, upload):
    from controlplane.jobs.models import Job

    client = api(team.engineer)
    url = _jobs_url(team)
    spaced = f'{{ "params": {{"upload_id": {upload.pk}}}, "kind": "inspect" }}'
    compact = f'{{"kind":"inspect","params":{{"upload_id":{upload.pk}}}}}'
    headers = {"Idempotency-Key": "k1"}
    first = client.post(url, spaced, content_type="application/json", headers=headers)
    again = client.post(url, compact, content_type="application/json", headers=headers)
    assert again.json()["id"] == first.json()["id"] and Job.objects.count() == 1


def test_the_same_key_with_another_body_is_a_422_and_creates_nothing(api, team, upload):
    from controlplane.jobs.models import Job

    client = api(team.engineer)
    _post(client, _jobs_url(team), {"kind": "inspect", "params": {"upload_id": upload.pk}}, "k")
    other = {"kind": "inspect", "params": {"upload_id": upload.pk, "preview_records": 3}}
    response = _post(client, _jobs_url(team), other, "k")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["status"] == 422
    assert "different request body" in error["message"]
    assert Job.objects.count() == 1


def test_keys_belong_to_their_user_and_endpoint(api, team, upload):
    from controlplane.jobs.models import Job

    body = {"kind": "inspect", "params": {"upload_id": upload.pk}}
    a = _post(api(team.engineer), _jobs_url(team), body, "shared")
    b = _post(api(team.owner), _jobs_url(team), body, "shared")
    token = _post(api(team.engineer, TOKEN_MAKER), "/api/v1/tokens/", {"name": "ci"}, "shared")
    assert a.status_code == b.status_code == token.status_code == 201
    assert a.json()["id"] != b.json()["id"] and Job.objects.count() == 2


def test_a_failed_request_is_not_stored_so_a_corrected_retry_runs(api, team, upload):
    from controlplane.jobs.models import Job

    client = api(team.engineer)
    bad = _post(client, _jobs_url(team), {"kind": "inspect", "params": {}}, "k2")
    assert bad.status_code == 400 and "Idempotent-Replayed" not in bad.headers
    good = _post(
        client, _jobs_url(team), {"kind": "inspect", "params": {"upload_id": upload.pk}}, "k2"
    )
    assert good.status_code == 201 and Job.objects.count() == 1


def test_a_forbidden_request_stores_nothing(api, team, upload):
    body = {"kind": "inspect", "params": {"upload_id": upload.pk}}
    assert _post(api(team.viewer), _jobs_url(team), body, "k3").status_code == 403
    from controlplane.api.models import IdempotencyRecord

    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize("key", ["", "a b", "é", "x" * 256])
def test_a_malformed_key_is_a_400_naming_the_header(api, team, upload, key):
    from controlplane.jobs.models import Job

    body = {"kind": "inspect", "params": {"upload_id": upload.pk}}
    response = _post(api(team.engineer), _jobs_url(team), body, key)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["fields"]
    assert not Job.objects.exists()


def test_a_retried_token_post_returns_the_same_secret_never_stored_in_clear(api, team):
    from controlplane.accounts.models import ApiToken
    from controlplane.api.models import IdempotencyRecord

    client = api(team.engineer, TOKEN_MAKER)
    before = ApiToken.objects.count()
    first = _post(client, "/api/v1/tokens/", {"name": "deploy"}, "tok-1")
    again = _post(client, "/api/v1/tokens/", {"name": "deploy"}, "tok-1")
    assert first.status_code == again.status_code == 201
    assert again.json()["token"] == first.json()["token"]
    assert ApiToken.objects.count() == before + 1 and _audit_count("token.created") == before + 1
    record = IdempotencyRecord.objects.get()
    assert first.json()["token"] not in record.response_token
    assert record.key_digest == hashlib.sha256(b"tok-1").hexdigest()


def test_a_retried_version_start_returns_the_same_upload_urls(api, team):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="D", slug="d", kind="text"
    )
    url = f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/"
    body = {"files": [{"name": "a.txt", "size": 3, "sha256": "ab" * 32}]}
    client = api(team.engineer)
    first = _post(client, url, body, "v-1")
    again = _post(client, url, body, "v-1")
    assert first.status_code == again.status_code == 201
    assert again.json()["uploads"] == first.json()["uploads"]
    assert DatasetVersion.objects.filter(dataset=dataset).count() == 1


def test_expired_keys_run_again_and_are_purged(api, team, upload):
    from controlplane.api.models import IdempotencyRecord
    from controlplane.api.tasks import purge_idempotency_keys
    from controlplane.jobs.models import Job

    client = api(team.engineer)
    body = {"kind": "inspect", "params": {"upload_id": upload.pk}}
    _post(client, _jobs_url(team), body, "old")
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _post(client, _jobs_url(team), body, "old").status_code == 201
    assert Job.objects.count() == 2  # a day-old key is a new request
    assert purge_idempotency_keys() == 0  # the fresh record is kept
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert purge_idempotency_keys() == 1 and not IdempotencyRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_create_exactly_one_job(api, team, upload, monkeypatch):
    """Two threads, two database connections, the same key at the same moment."""
    from django.db import connection

    import controlplane.jobs.api as jobs_api
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job

    original = jobs_api.job_create
    started = threading.Barrier(2)

    def slow_create(**kwargs):
        job = original(**kwargs)
        time.sleep(0.5)  # hold the transaction open while the duplicate arrives
        return job

    monkeypatch.setattr(jobs_api, "job_create", slow_create)
    body = {"kind": "inspect", "params": {"upload_id": upload.pk}}
    clients = [api(team.engineer), api(team.engineer)]
    responses = [None, None]

    def send(index):
        try:
            started.wait(10)
            responses[index] = _post(clients[index], _jobs_url(team), body, "race-1")
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].json() == responses[1].json()
    assert Job.objects.count() == 1
    assert AuditEvent.objects.filter(action="job.created").count() == 1
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in responses) == ["", "true"]


def test_the_header_is_documented_on_the_create_endpoints(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target))
    paths = yaml.safe_load(target.read_text())["paths"]

    def header_names(path):
        params = paths[path]["post"].get("parameters", [])
        return {p["name"] for p in params if p["in"] == "header"}

    for path in [
        "/api/v1/projects/{project_id}/jobs/",
        "/api/v1/projects/{project_id}/datasets/{dataset_id}/versions/",
        "/api/v1/tokens/",
        "/api/v1/projects/",
        "/api/v1/orgs/",
        "/api/v1/orgs/{slug}/members/",
    ]:
        assert "Idempotency-Key" in header_names(path), path
    # The decorator documents its own view only.
    assert "Idempotency-Key" not in header_names("/api/v1/projects/{project_id}/members/")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("endpoint", ["tokens", "versions"])
def test_concurrent_duplicates_create_exactly_one_token_or_version(
    api, team, endpoint, monkeypatch
):
    from django.db import connection

    import controlplane.api.idempotency as idempotency
    from controlplane.accounts.models import ApiToken
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_create

    if endpoint == "tokens":
        url, body, model = "/api/v1/tokens/", {"name": "race"}, ApiToken
    else:
        dataset = dataset_create(
            project=team.project, actor=team.engineer, name="D", slug="d", kind="text"
        )
        url = f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/"
        body = {"files": [{"name": "a.txt", "size": 3, "sha256": "ab" * 32}]}
        model = DatasetVersion
    scopes = TOKEN_MAKER if endpoint == "tokens" else None
    clients = [api(team.engineer, scopes), api(team.engineer, scopes)]
    before = model.objects.count()
    original_seal = idempotency._seal

    def slow_seal(*args, **kwargs):
        time.sleep(0.5)  # the first request's transaction stays open: the second must wait
        return original_seal(*args, **kwargs)

    monkeypatch.setattr(idempotency, "_seal", slow_seal)
    started = threading.Barrier(2)
    responses = [None, None]

    def send(index):
        try:
            started.wait(10)
            responses[index] = _post(clients[index], url, body, f"race-{endpoint}")
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].json() == responses[1].json()
    assert model.objects.count() == before + 1
