"""Post-training jobs (sft, lora, qlora, reward, dpo, ppo): the request a worker receives,
the errors a user gets, who may start them, the form on a model's page, the run page.

No worker runs here: the base model is a succeeded job whose artifacts are rows (what a
pretrain job leaves behind), and a run's progress is replayed as worker events.
"""

import hashlib

import pytest

from workers.protocol import EventType, JobEvent

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

MODEL = ["model/config.json", "model/model.safetensors", "model/tokenizer.json"]
REWARD = ["reward/config.json", "reward/model.safetensors", "reward/tokenizer.json"]
TRAIN_DEFAULTS = {
    "steps": 200,
    "batch_size": 8,
    "warmup_steps": 10,
    "log_interval": 10,
    "eval_interval": 50,
    "checkpoint_interval": 0,
}
LORA_DEFAULTS = {
    "r": 8,
    "alpha": 16.0,
    "dropout": 0.0,
    "target_modules": ["*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj"],
}
DPO_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "precompute_reference": False}
# The engine's PPOConfig defaults (they were 8/32/2 on the platform, 16/64/4 in the engine).
PPO_DEFAULTS = {
    "rollout_batch_size": 16,
    "max_new_tokens": 64,
    "kl_coef": 0.05,
    "ppo_epochs": 4,
    "clip_range": 0.2,
    "temperature": 1.0,
}
PAIRS = b'{"prompt": "ROMEO:", "chosen": "But soft!", "rejected": "zzz"}\n'


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Six users a test; nobody logs in with a password here, so skip PBKDF2's 0.3 s each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _finished_job(project, user, kind, names, *, state="succeeded", params=None, attempt=1):
    """A job as the platform sees it after its worker published `names`."""
    from controlplane.jobs.models import Job, JobArtifact

    job = Job.objects.create(
        project=project, kind=kind, state=state, params=params or {}, created_by=user
    )
    for name in names:
        JobArtifact.objects.create(
            job=job,
            name=name,
            object_key=f"{job.output_prefix}attempt-{attempt}/{name}",
            sha256=hashlib.sha256(name.encode()).hexdigest(),
            size=len(name),
        )
    return job


@pytest.fixture
def base(team):
    return _finished_job(team.project, team.engineer, "pretrain", MODEL)


@pytest.fixture
def reward_job(team):
    return _finished_job(team.project, team.engineer, "reward", REWARD)


@pytest.fixture
def pairs(team, make_ready_version):
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Prefs", slug="prefs", kind="text"
    )
    return make_ready_version(
        dataset, team.engineer, {"b.jsonl.gz": b"\x1f\x8b", "a.jsonl": PAIRS, "README.txt": b"x"}
    )


@pytest.fixture
def post(team, api, settings):
    settings.TRAINING_QUEUE = "gpu"
    client = api(team.engineer)

    def post(kind, params, *, project=None):
        return client.post(
            f"/api/v1/projects/{(project or team.project).pk}/jobs/",
            {"kind": kind, "params": params},
            format="json",
        )

    return post


def _refs(names, job):
    return [
        {"uri": a.object_key, "sha256": a.sha256, "size": a.size}
        for a in (job.artifacts.get(name=name) for name in names)
    ]


@pytest.mark.parametrize(
    ("kind", "lr", "sections"),
    [
        ("sft", 1e-4, {}),
        ("lora", 1e-3, {"lora": LORA_DEFAULTS}),
        ("qlora", 1e-3, {"lora": LORA_DEFAULTS}),
        ("reward", 5e-5, {"pairs_corruption": "mixed"}),
        ("dpo", 1e-5, {"pairs_corruption": "mixed", "dpo": DPO_DEFAULTS}),
        ("ppo", 1e-5, {"ppo": PPO_DEFAULTS}),
    ],
)
def test_each_kind_becomes_a_job_with_defaults_filled_and_the_base_model_as_inputs(
    team, base, reward_job, post, sent_jobs, kind, lr, sections
):
    from controlplane.jobs.models import Job

    params = {"base_job_id": base.pk}
    if kind == "ppo":
        params["reward_job_id"] = reward_job.pk
    response = post(kind, params)
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    names = ["base/config.json", "base/model.safetensors", "base/tokenizer.json"]
    inputs = _refs(MODEL, base)
    if kind == "ppo":
        names += REWARD  # reward/<file name>: the artifact names already read so
        inputs += _refs(REWARD, reward_job)
    expected = {
        "base_job_id": base.pk,
        **({"reward_job_id": reward_job.pk} if kind == "ppo" else {}),
        "pairs_count": 2000,
        "train": {**TRAIN_DEFAULTS, "lr": lr},
        **sections,
        "seed": 1337,
        "device": "auto",
        "resources": {"devices": 1, "nodes": 1, "strategy": "ddp"},  # one process
        "input_names": names,
    }
    assert job.kind == kind and job.queue == "gpu"
    assert job.params == expected
    assert job.inputs == inputs


def test_pairs_of_a_dataset_version_are_read_as_data_files(team, base, pairs, post):
    from controlplane.jobs.models import Job

    response = post("dpo", {"base_job_id": base.pk, "dataset_version_id": pairs.pk})
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert "pairs_count" not in job.params and job.params["dataset_version_id"] == pairs.pk
    assert job.params["input_names"][3:] == ["data/a.jsonl", "data/b.jsonl.gz"]  # no README
    data = {f.name: f for f in pairs.files.all()}
    assert job.inputs[3] == {
        "uri": data["a.jsonl"].object_key,
        "sha256": hashlib.sha256(PAIRS).hexdigest(),
        "size": len(PAIRS),
    }


def test_given_settings_are_kept_and_adapters_on_dpo_take_the_adapter_learning_rate(base, post):
    from controlplane.jobs.models import Job

    response = post(
        "dpo",
        {
            "base_job_id": base.pk,
            "pairs_count": 64,
            "train": {"steps": 30, "checkpoint_interval": 10},
            "lora": {"r": 4, "target_modules": ["*.attn.c_attn"]},
            "dpo": {"beta": 0.5, "label_smoothing": 0.1, "precompute_reference": True},
            "seed": 7,
            "device": "cpu",
        },
    )
    assert response.status_code == 201, response.content
    params = Job.objects.get(pk=response.json()["id"]).params
    assert params["pairs_count"] == 64 and params["seed"] == 7 and params["device"] == "cpu"
    assert params["train"] == {
        **TRAIN_DEFAULTS,
        "steps": 30,
        "checkpoint_interval": 10,
        "lr": 1e-4,
    }
    assert params["lora"] == {**LORA_DEFAULTS, "r": 4, "target_modules": ["*.attn.c_attn"]}
    assert params["dpo"] == {"beta": 0.5, "label_smoothing": 0.1, "precompute_reference": True}


def test_null_settings_take_their_defaults(base, post):
    from controlplane.jobs.models import Job

    response = post(
        "lora",
        {"base_job_id": base.pk, "pairs_count": None, "train": {"lr": None}, "seed": None},
    )
    assert response.status_code == 201, response.content
    params = Job.objects.get(pk=response.json()["id"]).params
    assert params["train"]["lr"] == 1e-3 and params["pairs_count"] == 2000
    assert params["seed"] == 1337


def test_a_model_published_again_by_a_later_attempt_is_read_from_that_attempt(team, post):
    from controlplane.jobs.models import Job, JobArtifact

    base = _finished_job(team.project, team.engineer, "sft", MODEL)
    again = JobArtifact.objects.create(
        job=base,
        name="model/model.safetensors",
        object_key=f"{base.output_prefix}attempt-2/model/model.safetensors",
        sha256="f" * 64,
        size=99,
    )
    response = post("sft", {"base_job_id": base.pk})
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert len(job.inputs) == 3 and job.inputs[1]["uri"] == again.object_key


def test_a_post_trained_model_is_a_base_for_the_next_job(team, post):
    sft = _finished_job(team.project, team.engineer, "sft", MODEL + ["samples.json"])
    assert post("dpo", {"base_job_id": sft.pk}).status_code == 201


def test_bad_requests_name_the_field_and_create_no_job(team, base, reward_job, pairs, post):
    from controlplane.datasets.services import DeclaredFile, dataset_version_start
    from controlplane.jobs.models import Job

    running = _finished_job(team.project, team.engineer, "pretrain", [], state="running")
    failed = _finished_job(team.project, team.engineer, "pretrain", MODEL, state="failed")
    no_model = _finished_job(team.project, team.engineer, "data_pipeline", ["report.json"])
    elsewhere = _finished_job(team.other_project, team.outsider, "pretrain", MODEL)
    text_only = pairs.dataset.versions.create(
        number=9, state="ready", created_by=team.engineer, note="no pairs"
    )
    text_only.files.create(name="corpus.txt", object_key="k/corpus.txt", size=1, sha256="0" * 64)
    uploading, _ = dataset_version_start(
        dataset=pairs.dataset, actor=team.engineer, files=[DeclaredFile("c.jsonl", 1, "0" * 64)]
    )
    ok = {"base_job_id": base.pk}
    cases = [
        ("sft", {}, "base_job_id", "required"),
        ("sft", {"base_job_id": str(base.pk)}, "base_job_id", "integer"),
        ("sft", {"base_job_id": 999999}, "base_job_id", "no job 999999 in this project"),
        ("sft", {"base_job_id": elsewhere.pk}, "base_job_id", f"no job {elsewhere.pk} in this"),
        ("sft", {"base_job_id": running.pk}, "base_job_id", "is running"),
        ("sft", {"base_job_id": failed.pk}, "base_job_id", "is failed"),
        ("sft", {"base_job_id": no_model.pk}, "base_job_id", "published no model"),
        ("sft", {"base_job_id": reward_job.pk}, "base_job_id", "published no model"),
        ("ppo", ok, "reward_job_id", "required"),
        ("ppo", {**ok, "reward_job_id": base.pk}, "reward_job_id", "pick a succeeded reward"),
        ("ppo", {**ok, "reward_job_id": elsewhere.pk}, "reward_job_id", "no job"),
        ("dpo", {**ok, "reward_job_id": reward_job.pk}, "reward_job_id", "only ppo"),
        ("sft", {**ok, "lora": {"r": 4}}, "lora", "sft trains all the weights"),
        ("sft", {**ok, "dpo": {"beta": 1}}, "dpo", "only dpo"),
        ("dpo", {**ok, "ppo": {}}, "ppo", "only ppo"),
        ("sft", {**ok, "dataset_version_id": text_only.pk}, "dataset_version_id", ".jsonl"),
        ("sft", {**ok, "dataset_version_id": uploading.pk}, "dataset_version_id", "uploading"),
        ("sft", {**ok, "dataset_version_id": 999999}, "dataset_version_id", "no dataset"),
        ("sft", {**ok, "dataset_version_id": pairs.pk, "pairs_count": 50}, "pairs_count", "built"),
        ("sft", {**ok, "pairs_count": 8}, "pairs_count", "between 16 and 100000"),
        (
            "dpo",
            {**ok, "dataset_version_id": pairs.pk, "pairs_corruption": "shuffle"},
            "pairs_corruption",
            "built",
        ),
        ("reward", {**ok, "pairs_corruption": "reversed"}, "pairs_corruption", "shuffle"),
        ("lora", {**ok, "pairs_corruption": "shuffle"}, "pairs_corruption", "unknown"),
        ("sft", {**ok, "train": {"steps": 0}}, "train.steps", "between"),
        ("sft", {**ok, "train": {"batch_size": 1.5}}, "train.batch_size", "integer"),
        ("sft", {**ok, "train": {"lr": 2}}, "train.lr", "between"),
        ("sft", {**ok, "train": {"warmup_steps": -1}}, "train.warmup_steps", "between"),
        ("sft", {**ok, "train": {"epochs": 3}}, "train", "unknown key(s) epochs"),
        ("lora", {**ok, "lora": {"r": 0}}, "lora.r", "between 1 and 256"),
        ("lora", {**ok, "lora": {"alpha": 0}}, "lora.alpha", "greater than 0"),
        ("qlora", {**ok, "lora": {"dropout": 0.95}}, "lora.dropout", "between"),
        ("lora", {**ok, "lora": {"target_modules": []}}, "lora.target_modules", "non-empty"),
        ("lora", {**ok, "lora": {"target_modules": [""]}}, "lora.target_modules", "non-empty"),
        ("dpo", {**ok, "dpo": {"beta": 0}}, "dpo.beta", "greater than 0"),
        ("dpo", {**ok, "dpo": {"label_smoothing": 0.5}}, "dpo.label_smoothing", "between"),
        ("dpo", {**ok, "dpo": {"precompute_reference": "yes"}}, "dpo.precompute_reference", "true"),
        (
            "ppo",
            {**ok, "reward_job_id": reward_job.pk, "ppo": {"kl_coef": -1}},
            "ppo.kl_coef",
            "between",
        ),
        (
            "ppo",
            {**ok, "reward_job_id": reward_job.pk, "ppo": {"clip_range": 0}},
            "ppo.clip_range",
            "greater",
        ),
        ("sft", {**ok, "seed": -1}, "seed", "between"),
        ("sft", {**ok, "device": "tpu"}, "device", "auto, cpu or cuda"),
        ("sft", {**ok, "epochs": 3}, "epochs", "unknown parameter"),
        ("sft", {**ok, "input_names": ["x"]}, "input_names", "unknown parameter"),
    ]
    for kind, params, field, words in cases:
        response = post(kind, params)
        assert response.status_code == 400, (kind, params, response.content)
        fields = response.json()["error"]["fields"]
        assert words in " ".join(fields.get(f"params.{field}", ["(missing)"])), (
            kind,
            params,
            fields,
        )
    assert not Job.objects.exclude(
        pk__in=[base.pk, reward_job.pk, running.pk, failed.pk, no_model.pk, elsewhere.pk]
    ).exists()


def test_another_projects_job_reads_exactly_like_a_missing_one(team, post):
    elsewhere = _finished_job(team.other_project, team.outsider, "pretrain", MODEL)
    missing = elsewhere.pk + 1000

    def message(job_id):
        fields = post("sft", {"base_job_id": job_id}).json()["error"]["fields"]
        return fields["params.base_job_id"][0].replace(str(job_id), "N")

    assert message(elsewhere.pk) == message(missing)


def test_a_viewer_cannot_start_one_and_an_outsider_sees_nothing(team, base, api, client):
    from controlplane.jobs.models import Job

    url = f"/api/v1/projects/{team.project.pk}/jobs/"
    body = {"kind": "sft", "params": {"base_job_id": base.pk}}
    assert api(team.viewer).post(url, body, format="json").status_code == 403
    assert api(team.outsider).post(url, body, format="json").status_code == 404
    # Nor from their own project: the base job is not theirs to read.
    own = api(team.outsider).post(
        f"/api/v1/projects/{team.other_project.pk}/jobs/", body, format="json"
    )
    assert (
        own.status_code == 400
        and "no job" in own.json()["error"]["fields"]["params.base_job_id"][0]
    )
    page = f"/projects/{team.project.pk}/jobs/{base.pk}/"
    client.force_login(team.viewer)
    assert "Post-train this model" not in client.get(page).content.decode()
    assert client.post(page + "posttrain/", {"kind": "sft", "steps": 5}).status_code == 403
    client.force_login(team.outsider)
    assert client.get(page).status_code == 404
    assert client.get(page + "posttrain/").status_code == 404
    assert client.post(page + "posttrain/", {"kind": "sft", "steps": 5}).status_code == 404
    assert Job.objects.count() == 1


FORM = {"kind": "sft", "steps": 40, "batch_size": 4, "beta": 0.1, "kl_coef": 0.05, "device": "cpu"}


def test_the_form_on_a_model_page_starts_a_job_or_shows_what_is_wrong(
    team, base, reward_job, pairs, client, settings
):
    from controlplane.jobs.models import Job

    settings.TRAINING_QUEUE = "cpu"
    client.force_login(team.engineer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{base.pk}/").content.decode()
    assert "Post-train this model" in page and "prefs v1" in page and f"job {reward_job.pk}" in page
    running = _finished_job(team.project, team.engineer, "pretrain", MODEL, state="running")
    other = client.get(f"/projects/{team.project.pk}/jobs/{running.pk}/").content.decode()
    assert "Post-train this model" not in other  # no finished model yet
    url = f"/projects/{team.project.pk}/jobs/{base.pk}/posttrain/"
    count = Job.objects.count()

    bad = client.post(url, {**FORM, "lora_r": 8})  # adapters on sft
    assert bad.status_code == 200 and "sft trains all the weights" in bad.content.decode()
    bad = client.post(url, {**FORM, "kind": "ppo"})  # no reward model
    assert bad.status_code == 200 and "this field is required" in bad.content.decode()
    bad = client.post(url, {**FORM, "steps": 0})
    assert bad.status_code == 200 and Job.objects.count() == count

    response = client.post(
        url,
        {**FORM, "kind": "dpo", "dataset_version": pairs.pk, "beta": 0.3, "experiment": "prefs"},
    )
    job = Job.objects.latest("id")
    assert response.status_code == 302 and response["Location"].endswith(f"/jobs/{job.pk}/")
    assert job.kind == "dpo" and job.experiment == "prefs" and job.queue == "cpu"
    assert job.params["dpo"]["beta"] == 0.3 and job.params["dataset_version_id"] == pairs.pk
    assert job.params["train"]["steps"] == 40 and "ppo" not in job.params  # kl_coef: ppo only
    response = client.post(
        url, {**FORM, "kind": "ppo", "reward_job": reward_job.pk, "kl_coef": 0.2, "lr": 3e-5}
    )
    job = Job.objects.latest("id")
    assert response.status_code == 302 and job.params["reward_job_id"] == reward_job.pk
    assert job.params["ppo"]["kl_coef"] == 0.2 and job.params["train"]["lr"] == 3e-5


def _replay_run(job):
    """What a worker reports for a short LoRA run: curves, a checkpoint, the model, done."""
    from controlplane.jobs.services import job_apply_event

    prefix = f"{job.output_prefix}attempt-1/"
    events = [
        (EventType.STARTED, {"worker": "w1"}),
        (EventType.METRIC, {"step": 5, "values": {"train/loss": 2.5, "dpo/accuracy": 0.5}}),
        (EventType.METRIC, {"step": 10, "values": {"train/loss": 2.1, "dpo/accuracy": 0.8}}),
        (
            EventType.CHECKPOINT,
            {"key": prefix + "ckpt/step_10.pt", "name": "ckpt/step_10.pt", "step": 10, "size": 9},
        ),
    ]
    for name in [*MODEL, "adapter/adapter.safetensors", "adapter/adapter.json", "samples.json"]:
        events.append((EventType.ARTIFACT, {"key": prefix + name, "name": name, "size": 3}))
    events.append((EventType.FINISHED, {"result": {"steps": 10, "dpo/accuracy": 0.8}}))
    for seq, (event_type, payload) in enumerate(events):
        job_apply_event(JobEvent(job.pk, 1, seq, event_type, payload))
    job.refresh_from_db()
    return job


def test_the_run_page_shows_curves_checkpoints_artifacts_and_the_base_model(
    team, base, client, api
):
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    job = job_create(
        project=team.project,
        kind="dpo",
        actor=team.engineer,
        params={"base_job_id": base.pk, "lora": {}},
    )
    job = _replay_run(job)
    client.force_login(team.engineer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    for text in ("train/loss", "dpo/accuracy", "<svg", "Checkpoints", "adapter/adapter.json"):
        assert text in page, text
    assert (
        f'href="/projects/{team.project.pk}/jobs/{base.pk}/">job {base.pk} (pretrain)</a>' in page
    )
    assert "Post-train this model" in page  # its model chains into the next job
    # A failed post-training run goes on from its checkpoint like pre-training.
    Job.objects.filter(pk=job.pk).update(state="failed", error="node lost")
    resumed = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/resume/",
        {"checkpoint_id": job.artifacts.get(kind="checkpoint").pk},
        format="json",
    )
    assert resumed.status_code == 200 and resumed.json()["attempt"] == 2
    # The dataset's lineage follows the model: its pretrain job, then the dpo job.
    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    version = dataset.versions.create(number=1, state="ready", created_by=team.engineer)
    Job.objects.filter(pk=base.pk).update(params={"dataset_version_id": version.pk})
    lineage = client.get(f"/projects/{team.project.pk}/datasets/{dataset.pk}/").content.decode()
    graph = lineage[lineage.index('<svg class="lineage"') :]
    assert f"job {base.pk}" in graph and f"job {job.pk}" in graph and "dpo" in graph
    assert graph.count("<line") == 2  # v1 -> pretrain -> dpo
