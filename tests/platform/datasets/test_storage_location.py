"""Every dataset version records where its objects are stored: the bucket and its region."""

import hashlib

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(team):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )


def _start(dataset, user):
    from controlplane.datasets.services import DeclaredFile, dataset_version_start

    data = b"to be or not to be\n"
    declared = DeclaredFile("a.jsonl", len(data), hashlib.sha256(data).hexdigest())
    version, _ = dataset_version_start(dataset=dataset, actor=user, files=[declared])
    return version


def _use_bucket(monkeypatch, bucket: str) -> None:
    from controlplane.storage import object_store

    monkeypatch.setenv("OBJECT_STORE_BUCKET", bucket)
    object_store.cache_clear()


def test_a_version_records_the_bucket_the_store_is_configured_with(team, dataset, monkeypatch):
    _use_bucket(monkeypatch, "bucket-a")
    first = _start(dataset, team.engineer)
    _use_bucket(monkeypatch, "bucket-b")
    second = _start(dataset, team.engineer)

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.storage_bucket, first.storage_region) == ("bucket-a", "local")
    assert (second.storage_bucket, second.storage_region) == ("bucket-b", "local")


def test_an_s3_version_records_the_region_the_server_reports(team, dataset, s3_server, monkeypatch):
    """The platform is configured for us-east-1, but bucket B was made in eu-west-1."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY
    from workers.storage import S3ObjectStore

    S3ObjectStore(
        s3_server, "residency-b", access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="eu-west-1"
    ).ensure_bucket()
    monkeypatch.setenv("OBJECT_STORE_ENDPOINT", s3_server)
    monkeypatch.setenv("OBJECT_STORE_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("OBJECT_STORE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("OBJECT_STORE_REGION", "us-east-1")
    _use_bucket(monkeypatch, "residency-b")

    version = _start(dataset, team.engineer)

    version.refresh_from_db()
    assert (version.storage_bucket, version.storage_region) == ("residency-b", "eu-west-1")


def test_a_derived_version_records_where_the_store_is(team, dataset, monkeypatch):
    from controlplane.datasets.services import dataset_version_from_job
    from controlplane.jobs.models import Job

    source = _start(dataset, team.engineer)
    _use_bucket(monkeypatch, "pipeline-bucket")
    job = Job.objects.create(
        project=team.project,
        kind="data_pipeline",
        state="running",
        params={"dataset_version_id": source.pk},
        created_by=team.engineer,
    )

    derived = dataset_version_from_job(job=job, result={"records": 0, "files": []})

    derived.refresh_from_db()
    assert (derived.storage_bucket, derived.storage_region) == ("pipeline-bucket", "local")


def test_the_api_and_the_version_page_show_where_it_is_stored(
    team, dataset, api, client, monkeypatch
):
    _use_bucket(monkeypatch, "bucket-b")
    _start(dataset, team.engineer)
    url = f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/1/"

    body = api(team.viewer).get(url).json()

    assert body["storage"] == {"bucket": "bucket-b", "region": "local"}
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/datasets/{dataset.pk}/v1/").content.decode()
    assert "bucket <code>bucket-b</code>, region <code>local</code>" in page


def test_a_version_made_before_locations_were_kept_says_so(team, dataset, api, client):
    from controlplane.datasets.models import DatasetVersion

    DatasetVersion.objects.create(dataset=dataset, number=1, created_by=team.engineer)
    url = f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/1/"

    assert api(team.viewer).get(url).json()["storage"] == {"bucket": "", "region": ""}
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/datasets/{dataset.pk}/v1/").content.decode()
    assert "not recorded" in page
