"""Pre-training jobs: shards of a derived version in, metrics, checkpoints and samples out.

The worker's handler runs for real (a tiny GPT, a few steps, on the CPU); its events go
through the platform's event path as the control worker would apply them.
"""

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them


@pytest.fixture
def tokenized(make_token_version):
    return make_token_version(plays=3)


PARAMS = {
    "preset": "tiny",
    "train": {
        "max_iters": 12,
        "batch_size": 4,
        "eval_interval": 6,
        "eval_iters": 2,
        "log_interval": 3,
    },
    "model": {"block_size": 32},
    "checkpoint_interval": 6,
    "sample_tokens": 20,
    "sample_prompts": ["ROMEO:"],
}


def test_training_reports_metrics_checkpoints_and_samples(team, tokenized, run_on_worker):
    from controlplane.jobs.models import JobMetric
    from controlplane.jobs.services import job_create

    _raw, derived = tokenized
    job = job_create(
        project=team.project,
        kind="pretrain",
        actor=team.engineer,
        experiment="tiny",
        params={"dataset_version_id": derived.pk, **PARAMS},
    )
    assert job.queue == "cpu" and all(
        name.startswith("tokens/") for name in job.params["input_names"]
    )
    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    assert job.result["step"] == 12 and job.result["samples"][0]["prompt"] == "ROMEO:"
    steps = sorted(
        JobMetric.objects.filter(job=job, key="train/loss").values_list("step", flat=True)
    )
    assert steps == [3, 6, 9, 12]
    checkpoints = job.artifacts.filter(kind="checkpoint").order_by("step")
    assert [c.step for c in checkpoints] == [6, 12]
    assert {a.name for a in job.artifacts.filter(kind="output")} >= {
        "model/model.safetensors",
        "model/config.json",
    }


def test_a_resumed_attempt_continues_from_the_checkpoint(team, tokenized, run_on_worker):
    """What the reaper does after a worker died: attempt 2 starts from the last checkpoint."""
    from controlplane.jobs.models import Job, JobMetric
    from controlplane.jobs.services import job_create

    _raw, derived = tokenized
    full = run_on_worker(
        job_create(
            project=team.project,
            kind="pretrain",
            actor=team.engineer,
            params={"dataset_version_id": derived.pk, **PARAMS},
        )
    )
    first_half = dict(PARAMS, train={**PARAMS["train"], "max_iters": 12})
    job = job_create(
        project=team.project,
        kind="pretrain",
        actor=team.engineer,
        params={"dataset_version_id": derived.pk, **first_half},
    )
    job = run_on_worker(job)
    halfway = job.artifacts.get(kind="checkpoint", step=6)
    # Attempt 2 as the reaper dispatches it: same job, its checkpoint to resume from.
    Job.objects.filter(pk=job.pk).update(
        state="queued", attempt=2, resume_checkpoint=halfway.object_key, finished_at=None
    )
    job.refresh_from_db()
    job = run_on_worker(job)
    assert job.state == "succeeded" and job.result["step"] == 12
    resumed = dict(JobMetric.objects.filter(job=job, key="train/loss").values_list("step", "value"))
    reference = dict(
        JobMetric.objects.filter(job=full, key="train/loss").values_list("step", "value")
    )
    assert sorted(resumed) == [3, 6, 9, 12]  # replayed steps overwrote, none doubled
    assert resumed[12] == pytest.approx(reference[12], rel=1e-5)


def test_bad_training_requests_say_what_to_do(team, tokenized, api):
    raw, derived = tokenized
    client = api(team.engineer)

    def fields(params):
        response = client.post(
            f"/api/v1/projects/{team.project.pk}/jobs/",
            {"kind": "pretrain", "params": params},
            format="json",
        )
        assert response.status_code == 400, response.content
        return response.json()["error"]["fields"]

    assert "token shards" in fields({"dataset_version_id": raw.pk})["params.dataset_version_id"][0]
    assert "params.preset" in fields({"dataset_version_id": derived.pk, "preset": "huge"})
    assert "params.train.max_iters" in fields(
        {"dataset_version_id": derived.pk, "train": {"max_iters": 0}}
    )
    assert "params.train" in fields({"dataset_version_id": derived.pk, "train": {"epochs": 3}})
    assert "params.optim.lr" in fields({"dataset_version_id": derived.pk, "optim": {"lr": "fast"}})


def test_failed_run_resumes_from_a_chosen_checkpoint_but_a_cancelled_one_does_not(
    team, tokenized, api, run_on_worker
):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    _raw, derived = tokenized
    job = run_on_worker(
        job_create(
            project=team.project,
            kind="pretrain",
            actor=team.engineer,
            params={"dataset_version_id": derived.pk, **PARAMS},
        )
    )
    first = job.artifacts.get(kind="checkpoint", step=6)
    url = f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/resume/"
    client = api(team.engineer)
    assert (
        client.post(url, {"checkpoint_id": first.pk}, format="json").status_code == 409
    )  # succeeded
    Job.objects.filter(pk=job.pk).update(state="failed", error="CUDA out of memory")
    assert client.post(url, {"checkpoint_id": 999999}, format="json").status_code == 400
    assert api(team.viewer).post(url, {"checkpoint_id": first.pk}, format="json").status_code == 403
    response = client.post(url, {"checkpoint_id": first.pk}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "queued" and response.json()["attempt"] == 2
    job = run_on_worker(Job.objects.get(pk=job.pk))
    assert job.state == "succeeded" and job.result["step"] == 12
    Job.objects.filter(pk=job.pk).update(state="cancelled")
    refused = client.post(url, {"checkpoint_id": first.pk}, format="json")
    assert refused.status_code == 409 and "cancelled" in refused.json()["error"]["message"]


def test_training_from_the_version_page_shows_curves_checkpoints_and_samples(
    team, tokenized, client, run_on_worker
):
    from controlplane.jobs.models import Job

    raw, derived = tokenized
    client.force_login(team.engineer)
    raw_page = client.get(f"/projects/{team.project.pk}/datasets/{raw.dataset_id}/v{raw.number}/")
    assert "Train a model" not in raw_page.content.decode()  # no token shards there
    url = f"/projects/{team.project.pk}/datasets/{derived.dataset_id}/v{derived.number}/"
    assert "Start training" in client.get(url).content.decode()
    form = {
        "action": "train",
        "preset": "tiny",
        "experiment": "page",
        "max_iters": 12,
        "batch_size": 4,
        "block_size": 32,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "warmup_iters": 2,
        "eval_interval": 6,
        "checkpoint_interval": 6,
        "device": "cpu",
        "sample_prompt": "JULIET:",
    }
    bad = client.post(url, {**form, "max_iters": 0})
    assert bad.status_code == 200 and not Job.objects.filter(kind="pretrain").exists()
    response = client.post(url, form)
    job = Job.objects.get(kind="pretrain")
    assert response.status_code == 302 and job.experiment == "page"
    run_on_worker(job)
    page = client.get(response["Location"]).content.decode()
    assert "Samples" in page and "JULIET:" in page and "train/loss" in page and "<svg" in page
    assert "Checkpoints" in page and "Resume from here" not in page  # it succeeded
    lineage = client.get(f"/projects/{team.project.pk}/datasets/{raw.dataset_id}/").content.decode()
    graph = lineage[lineage.index('<svg class="lineage"') :]
    pipeline_job = derived.produced_by_id
    # uploaded v1 -> pipeline job -> v2 -> training job, each a link to its page
    for text in ("v1", f"job {pipeline_job}", "v2", f"job {job.pk}", "pretrain · page"):
        assert text in graph, text
    assert graph.count("<line") == 3
