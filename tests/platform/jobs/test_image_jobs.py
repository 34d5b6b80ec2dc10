"""Diffusion, GAN and VAE jobs: trained by the worker's handler, grids on the run page."""

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

TINY = {
    "preset": "tiny",
    "device": "cpu",
    "train": {
        "steps": 4,
        "batch_size": 16,
        "log_interval": 2,
        "checkpoint_interval": 2,
        "sample_interval": 2,
    },
}


@pytest.mark.parametrize("kind", ["diffusion", "gan", "vae"])
def test_image_job_trains_checkpoints_and_shows_its_grid(
    team, client, run_on_worker, settings, kind
):
    from controlplane.jobs.models import JobMetric
    from controlplane.jobs.services import job_create

    settings.TRAINING_QUEUE = "cpu"
    job = run_on_worker(
        job_create(project=team.project, kind=kind, actor=team.engineer, params=TINY)
    )
    assert job.state == "succeeded", job.error
    assert job.result["steps"] == 4 and job.queue == "cpu"
    assert sorted(job.artifacts.filter(kind="checkpoint").values_list("step", flat=True)) == [2, 4]
    assert JobMetric.objects.filter(job=job, step=4).exists()
    grid = job.artifacts.get(name="samples/step_000004.png")
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert f"/artifacts/{grid.pk}/" in page and "one row per digit" in page
    image = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/artifacts/{grid.pk}/")
    assert (
        image["Content-Type"] == "image/png" and b"".join(image.streaming_content)[:4] == b"\x89PNG"
    )
    client.force_login(team.outsider)
    assert (
        client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/artifacts/{grid.pk}/").status_code
        == 404
    )


def test_failed_image_run_resumes_from_its_checkpoint(team, api, run_on_worker, settings):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    settings.TRAINING_QUEUE = "cpu"
    job = run_on_worker(
        job_create(project=team.project, kind="vae", actor=team.engineer, params=TINY)
    )
    Job.objects.filter(pk=job.pk).update(state="failed", error="node lost")
    halfway = job.artifacts.get(kind="checkpoint", step=2)
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/resume/",
        {"checkpoint_id": halfway.pk},
        format="json",
    )
    assert response.status_code == 200, response.content
    job = run_on_worker(Job.objects.get(pk=job.pk))
    assert job.state == "succeeded" and job.attempt == 2 and job.result["steps"] == 4


def test_bad_image_job_requests_name_the_field(team, api):
    client = api(team.engineer)
    url = f"/api/v1/projects/{team.project.pk}/jobs/"
    for params, field in [
        ({"preset": "huge"}, "params.preset"),
        ({"train": {"steps": 0}}, "params.train.steps"),
        ({"train": {"epochs": 1}}, "params.train"),
        ({"device": "tpu"}, "params.device"),
    ]:
        response = client.post(url, {"kind": "gan", "params": params}, format="json")
        assert response.status_code == 400 and field in response.json()["error"]["fields"], params


def test_image_job_from_the_new_job_page(team, client, settings):
    from controlplane.jobs.models import Job

    settings.TRAINING_QUEUE = "cpu"
    client.force_login(team.engineer)
    url = f"/projects/{team.project.pk}/jobs/new/"
    assert f'href="{url}gan/"' in client.get(url).content.decode()
    bad = client.post(f"{url}gan/", {"preset": "tiny", "train.steps": 0, "device": "cpu"})
    assert bad.status_code == 200 and not Job.objects.exists()
    response = client.post(
        f"{url}diffusion/",
        {"preset": "tiny", "train.steps": 6, "experiment": "digits", "device": "cpu"},
    )
    job = Job.objects.get()
    assert (
        response.status_code == 302
        and job.kind == "diffusion"
        and job.params["train"] == {"steps": 6}
    )
    client.force_login(team.viewer)
    assert client.get(url).status_code == 403
    assert client.post(f"{url}vae/", {"preset": "tiny", "device": "cpu"}).status_code == 403
