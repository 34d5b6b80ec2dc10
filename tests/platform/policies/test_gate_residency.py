"""Rule 3 (data residency): uploads, versions made ready and job outputs are checked
against where the platform's object store keeps them (its `location()`)."""

import hashlib
import uuid

import pytest

from tests.platform.policies.conftest import PAIRS

pytestmark = pytest.mark.django_db


def _declared():
    from controlplane.datasets.services import DeclaredFile

    return [DeclaredFile("pairs.jsonl", len(PAIRS), hashlib.sha256(PAIRS).hexdigest())]


def _start(team, dataset):
    from controlplane.datasets.services import dataset_version_start

    version, _ = dataset_version_start(dataset=dataset, actor=team.engineer, files=_declared())
    return version


def test_an_upload_to_an_allowed_location_starts(team, set_policy, make_dataset):
    from controlplane.storage import object_store

    where = object_store().location()
    assert (where.bucket, where.region) == ("controlplane", "local")
    set_policy(residency={"enabled": True, "allowed_regions": ["local"]})

    version = _start(team, make_dataset())

    assert (version.storage_bucket, version.storage_region) == ("controlplane", "local")


def test_an_upload_to_a_region_outside_the_policy_is_refused(
    team, set_policy, make_dataset, decisions
):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.policies.errors import PolicyDenied

    set_policy(residency={"enabled": True, "allowed_regions": ["eu-west-1", "eu-central-1"]})
    dataset = make_dataset()

    with pytest.raises(PolicyDenied) as refused:
        _start(team, dataset)

    (denial,) = refused.value.decision.denials
    assert denial.rule == "residency"
    assert denial.reason == (
        "plays (new version): region local is not among the allowed regions "
        "(eu-west-1, eu-central-1)"
    )
    assert "OBJECT_STORE_BUCKET" in denial.fix
    assert not DatasetVersion.objects.filter(dataset=dataset).exists()
    assert decisions("policy.denied", dataset)


def test_a_job_whose_outputs_would_land_in_another_bucket_is_refused(
    team, set_policy, make_dataset, uploaded, monkeypatch
):
    from controlplane.jobs.services import job_create
    from controlplane.policies.errors import PolicyDenied
    from controlplane.storage import object_store

    raw = uploaded(make_dataset())
    set_policy(residency={"enabled": True, "allowed_buckets": ["controlplane"]})
    params = {"dataset_version_id": raw.pk}
    assert job_create(
        project=team.project, kind="data_pipeline", params=params, actor=team.engineer
    )

    monkeypatch.setenv("OBJECT_STORE_BUCKET", "elsewhere")
    object_store.cache_clear()
    with pytest.raises(PolicyDenied) as refused:
        job_create(project=team.project, kind="data_pipeline", params=params, actor=team.engineer)

    (denial,) = refused.value.decision.denials
    assert denial.rule == "residency" and denial.subject.type == "job"
    assert "outputs would be stored in bucket elsewhere" in denial.reason


def test_a_pipeline_output_in_a_bucket_outside_the_policy_is_a_violation(
    team, set_policy, make_dataset, uploaded, derived, monkeypatch
):
    """A pipeline's output cannot be refused once written: it is ready, and a violation."""
    from controlplane.policies.models import Violation
    from controlplane.storage import object_store

    raw = uploaded(make_dataset())
    set_policy(residency={"enabled": True, "allowed_buckets": ["controlplane"]})
    monkeypatch.setenv("OBJECT_STORE_BUCKET", "elsewhere")
    object_store.cache_clear()

    tokens = derived(raw)

    assert tokens.state == "ready"
    (violation,) = Violation.objects.filter(subject_id=tokens.pk)
    assert violation.rule == "residency"
    assert "bucket elsewhere is not among the allowed buckets" in violation.reason


def test_the_upload_page_warns_before_anything_is_sent(team, client, set_policy, make_dataset):
    dataset = make_dataset()
    client.force_login(team.engineer)
    url = f"/projects/{team.project.pk}/datasets/{dataset.pk}/"
    assert "policy-denied" not in client.get(url).content.decode().split("</header>")[1]

    set_policy(residency={"enabled": True, "allowed_regions": ["eu-west-1"]})
    html = client.get(url).content.decode()

    assert "The policy would refuse an upload to this dataset now" in html
    assert "Rule 3: Data residency" in html
    assert "region local is not among the allowed regions" in html


# --- two buckets on the S3 test server --------------------------------------------------


def _bucket_in(s3_server: str, region: str) -> str:
    """A bucket created in `region` (moto keeps the region it was made in)."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY
    from workers.storage import S3ObjectStore

    bucket = f"residency-{region}-{uuid.uuid4().hex[:8]}"
    S3ObjectStore(
        s3_server, bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=region
    ).ensure_bucket()
    return bucket


def _platform_on(monkeypatch, s3_server: str, bucket: str) -> None:
    """The platform's store on `bucket`, configured for us-east-1 whatever the bucket's
    region: residency goes by where the server says the bucket is."""
    from controlplane.storage import object_store
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("OBJECT_STORE_ENDPOINT", s3_server)
    monkeypatch.setenv("OBJECT_STORE_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("OBJECT_STORE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("OBJECT_STORE_REGION", "us-east-1")
    monkeypatch.setenv("OBJECT_STORE_BUCKET", bucket)
    object_store.cache_clear()


def test_two_s3_buckets_one_in_an_allowed_region(
    team, set_policy, make_dataset, s3_server, monkeypatch
):
    from controlplane.policies.errors import PolicyDenied

    european = _bucket_in(s3_server, "eu-west-1")
    american = _bucket_in(s3_server, "us-east-1")
    dataset = make_dataset()
    set_policy(residency={"enabled": True, "allowed_regions": ["eu-west-1"]})

    _platform_on(monkeypatch, s3_server, european)
    version = _start(team, dataset)
    assert (version.storage_bucket, version.storage_region) == (european, "eu-west-1")

    _platform_on(monkeypatch, s3_server, american)
    with pytest.raises(PolicyDenied) as refused:
        _start(team, dataset)
    assert "region us-east-1 is not among the allowed regions (eu-west-1)" in (
        refused.value.decision.denials[0].reason
    )
