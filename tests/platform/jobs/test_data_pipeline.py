"""A data-pipeline job turns an uploaded text version into a cleaned, tokenized version.

The worker's handler runs for real on the local object store; its events go through the
platform's event path exactly as the control worker would apply them.
"""

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them


@pytest.fixture
def plays(team, make_ready_version):
    from controlplane.datasets.services import dataset_create
    from engine.data.corpora import shakespeare_files

    files = {p.name: p.read_bytes() for p in shakespeare_files("modern")[:3]}
    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    return make_ready_version(dataset, team.engineer, files)


def test_pipeline_job_derives_a_tokenized_version(team, plays, run_on_worker):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.services import job_create

    job = job_create(
        project=team.project,
        kind="data_pipeline",
        actor=team.engineer,
        params={"dataset_version_id": plays.pk, "val_fraction": 0.34},
    )
    assert job.params["input_names"] == sorted(f.name for f in plays.files.all())
    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    derived = job.produced_versions.get()
    assert (
        derived.number == 2 and derived.state == "ready" and list(derived.parents.all()) == [plays]
    )
    roles = {f.role for f in derived.files.all()}
    assert {"data", "report", "tokenizer", "shard", "manifest"} <= roles
    assert derived.record_count == 3 and derived.report["records_read"] == 3
    assert derived.preview and "text" in derived.preview[0]
    assert job.result["tokens"]["train"] > 100_000
    assert AuditEvent.objects.filter(
        action="dataset_version.derived", artifact_id=str(derived.pk)
    ).exists()


def test_bad_pipeline_requests_name_the_problem(team, plays, api, make_ready_version):
    from controlplane.datasets.services import DeclaredFile, dataset_create, dataset_version_start

    client = api(team.engineer)
    url = f"/api/v1/projects/{team.project.pk}/jobs/"

    def errors(params):
        response = client.post(url, {"kind": "data_pipeline", "params": params}, format="json")
        assert response.status_code == 400, response.content
        return response.json()["error"]["fields"]

    assert "params.pipeline" in errors(
        {
            "dataset_version_id": plays.pk,
            "pipeline": {"stages": [{"quality": {"min_words": "many"}}]},
        }
    )
    assert "params.pipeline" in errors(
        {"dataset_version_id": plays.pk, "pipeline": {"output": {"path": "/etc"}}}
    )
    assert "params.tokenizer.vocab_size" in errors(
        {"dataset_version_id": plays.pk, "tokenizer": {"kind": "bpe", "vocab_size": 3}}
    )
    assert "params.val_fraction" in errors({"dataset_version_id": plays.pk, "val_fraction": 2})
    images = dataset_create(
        project=team.project, actor=team.engineer, name="Digits", slug="digits", kind="images"
    )
    image_version = make_ready_version(images, team.engineer, {"d.npz": b"not really"})
    assert (
        "images" in errors({"dataset_version_id": image_version.pk})["params.dataset_version_id"][0]
    )
    uploading, _ = dataset_version_start(
        dataset=plays.dataset, actor=team.engineer, files=[DeclaredFile("x", 1, "a" * 64)]
    )
    assert (
        "uploading" in errors({"dataset_version_id": uploading.pk})["params.dataset_version_id"][0]
    )
    outsider_dataset = dataset_create(
        project=team.other_project, actor=team.outsider, name="B", slug="b", kind="text"
    )
    foreign = make_ready_version(outsider_dataset, team.outsider, {"b.txt": b"hello"})
    assert (
        "no dataset version"
        in errors({"dataset_version_id": foreign.pk})["params.dataset_version_id"][0]
    )


def test_pipeline_from_the_version_page_and_its_report(team, plays, client, run_on_worker):
    from controlplane.jobs.models import Job

    client.force_login(team.engineer)
    url = f"/projects/{team.project.pk}/datasets/{plays.dataset_id}/v1/"
    page = client.get(url).content.decode()
    assert "Run data pipeline" in page, page[page.find("<main>") :]
    assert "min_words" in page, page[page.find("Clean and tokenize") :][
        :3000
    ]  # the engine's defaults, editable
    bad = client.post(
        url,
        {"action": "pipeline", "pipeline": "{not json", "tokenizer": "char", "val_fraction": 0.1},
    )
    assert (
        bad.status_code == 200
        and "not valid JSON" in bad.content.decode()
        and not Job.objects.exists()
    )
    response = client.post(
        url, {"action": "pipeline", "pipeline": "", "tokenizer": "char", "val_fraction": 0.34}
    )
    job = Job.objects.get()
    assert response.status_code == 302 and job.kind == "data_pipeline"
    job = run_on_worker(job)
    derived = job.produced_versions.get()
    report_page = client.get(
        f"/projects/{team.project.pk}/datasets/{plays.dataset_id}/v{derived.number}/"
    )
    text = report_page.content.decode()
    assert "Pipeline report" in text and "quality" in text and "First records" in text
    assert f"job {job.pk}" in text and "Run data pipeline" not in text
    client.force_login(team.viewer)
    assert "Run data pipeline" not in client.get(url).content.decode()
