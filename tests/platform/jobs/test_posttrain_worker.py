"""Post-training jobs run by the worker's handler: a model in, a better one out, chained."""

import json

import pytest

pytestmark = pytest.mark.django_db

STEPS = {
    "steps": 4,
    "batch_size": 4,
    "log_interval": 2,
    "eval_interval": 0,
    "checkpoint_interval": 2,
}
PPO = {"rollout_batch_size": 4, "max_new_tokens": 8, "ppo_epochs": 1}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.TRAINING_QUEUE = "cpu"


def start(team, kind, params, run_on_worker):
    from controlplane.jobs.services import job_create

    builtin = {} if "dataset_version_id" in params else {"pairs_count": 48}
    params = {**builtin, "device": "cpu", "train": dict(STEPS), **params}
    job = job_create(project=team.project, kind=kind, actor=team.engineer, params=params)
    return run_on_worker(job)


def test_lora_then_dpo_chain_with_checkpoints_metrics_and_samples(
    team, client, model_job, run_on_worker
):
    from controlplane.jobs.models import JobMetric

    lora = start(team, "lora", {"base_job_id": model_job.pk, "lora": {"r": 2}}, run_on_worker)
    assert lora.state == "succeeded", lora.error
    names = set(lora.artifacts.values_list("name", flat=True))
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= names
    assert {"adapter/adapter.safetensors", "adapter/adapter.json"} <= names
    assert sorted(lora.artifacts.filter(kind="checkpoint").values_list("step", flat=True)) == [2, 4]
    assert JobMetric.objects.filter(job=lora, key="eval/loss", step=0).exists()
    assert lora.result["trainable_parameters"] < lora.result["total_parameters"]
    assert lora.result["samples"] and "prompt" in lora.result["samples"][0]

    dpo = start(team, "dpo", {"base_job_id": lora.pk}, run_on_worker)
    assert dpo.state == "succeeded", dpo.error
    assert JobMetric.objects.filter(job=dpo, key="dpo/accuracy").exists()
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{dpo.pk}/").content.decode()
    assert f"job {lora.pk}" in page


@pytest.mark.slow
def test_reward_model_then_ppo(team, model_job, run_on_worker):
    from controlplane.jobs.models import JobMetric

    reward = start(team, "reward", {"base_job_id": model_job.pk}, run_on_worker)
    assert reward.state == "succeeded", reward.error
    assert reward.artifacts.filter(name="reward/reward_model.json").exists()
    ppo = start(
        team,
        "ppo",
        {"base_job_id": model_job.pk, "reward_job_id": reward.pk, "ppo": PPO, "lora": {"r": 2}},
        run_on_worker,
    )
    assert ppo.state == "succeeded", ppo.error
    assert JobMetric.objects.filter(job=ppo, key="ppo/reward").exists()
    assert JobMetric.objects.filter(job=ppo, key="eval/kl").exists()


def test_failed_run_resumes_from_its_checkpoint(team, api, model_job, run_on_worker):
    from controlplane.jobs.models import Job

    job = start(team, "qlora", {"base_job_id": model_job.pk}, run_on_worker)
    assert job.state == "succeeded", job.error
    Job.objects.filter(pk=job.pk).update(state="failed", error="node lost")
    halfway = job.artifacts.get(kind="checkpoint", step=2)
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/resume/",
        {"checkpoint_id": halfway.pk},
        format="json",
    )
    assert response.status_code == 200, response.content
    job = run_on_worker(Job.objects.get(pk=job.pk))
    assert job.state == "succeeded", job.error
    assert job.attempt == 2 and job.result["steps"] == 4


def test_bad_pairs_fail_the_job_naming_the_line_and_publish_no_model(
    team, model_job, make_ready_version, run_on_worker
):
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Pairs", slug="pairs", kind="text"
    )
    lines = [json.dumps({"prompt": "ROMEO:", "response": "zq"})] * 3 + [json.dumps({"prompt": "x"})]
    version = make_ready_version(dataset, team.engineer, {"pairs.jsonl": "\n".join(lines).encode()})
    job = start(
        team, "sft", {"base_job_id": model_job.pk, "dataset_version_id": version.pk}, run_on_worker
    )
    assert job.state == "failed"
    assert "line 4" in job.error and "response" in job.error
    assert not job.artifacts.filter(name__startswith="model/").exists()
