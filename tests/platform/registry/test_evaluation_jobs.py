"""The `evaluate` job kind on the platform: what it accepts, what it reads, what it records.

Model versions are built with the ORM (their files put in the test's object store): the
registration services are tested on their own. The worker's handler runs for real, in
this process, with its events applied as the control worker would.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.engine.evaluate.eval_helpers import (
    TEXT_FIGURES,
    ascii_tokenizer,
    tiny_export,
    write_shards,
)

pytestmark = pytest.mark.django_db

TRAIN = ["Now is the winter of our discontent made glorious summer by this sun of York. " * 4]
VAL = ["Friends, Romans, countrymen, lend me your ears; I come to bury Caesar. " * 3]
QUICK = {"samples": 3, "sample_tokens": 40, "eval_batches": 2, "batch_size": 2, "device": "cpu"}


@pytest.fixture(autouse=True)
def _cpu_queue(settings):
    settings.TRAINING_QUEUE = "cpu"


def _put(key: str, data: bytes) -> dict:
    from controlplane.storage import object_store

    object_store().put_bytes(key, data)
    return {"object_key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _token_version(team, tmp_path, slug: str, val=VAL, project=None):
    """A ready dataset version holding token shards (tokens/*), as the data pipeline makes."""
    from django.utils import timezone

    from controlplane.datasets.models import DatasetFile, DatasetVersion
    from controlplane.datasets.services import dataset_create

    project = project or team.project
    owner = team.engineer if project == team.project else team.outsider
    folder = write_shards(tmp_path / slug, ascii_tokenizer(), TRAIN, val)
    dataset = dataset_create(project=project, actor=owner, name=slug, slug=slug, kind="text")
    version = DatasetVersion.objects.create(
        dataset=dataset, number=1, state="ready", created_by=owner, ready_at=timezone.now()
    )
    for path in sorted(folder.iterdir()):
        role = "shard" if path.suffix == ".bin" else path.stem
        stored = _put(f"projects/{project.pk}/datasets/{slug}/{path.name}", path.read_bytes())
        DatasetFile.objects.create(version=version, name=f"tokens/{path.name}", role=role, **stored)
    return version


def _job(team, kind: str = "pretrain", project=None, **params):
    from controlplane.jobs.models import Job

    return Job.objects.create(
        project=project or team.project,
        kind=kind,
        state="succeeded",
        params=params,
        created_by=team.engineer,
    )


def _model_files(tmp_path) -> dict[str, tuple[str, bytes]]:
    tokenizer = ascii_tokenizer()
    tokenizer.save(tmp_path / "tokenizer.json")
    folder = tiny_export(tmp_path / "export", tokenizer, tmp_path / "tokenizer.json")
    roles = {"model.safetensors": "weights", "config.json": "config", "tokenizer.json": "tokenizer"}
    return {p.name: (roles[p.name], p.read_bytes()) for p in folder.iterdir()}


def _version(team, job, files, *, task="text-generation", state="ready", name="shakespeare"):
    from controlplane.registry.models import ModelFile, ModelVersion, RegisteredModel

    model, _ = RegisteredModel.objects.get_or_create(
        project=job.project, name=name, defaults={"task": task, "created_by": job.created_by}
    )
    model.last_version_number += 1
    model.save()
    version = ModelVersion.objects.create(
        model=model,
        number=model.last_version_number,
        state=state,
        source_job=job,
        source_attempt=1,
        created_by=job.created_by,
    )
    for file_name, (role, data) in files.items():
        stored = _put(f"{version.object_prefix}{file_name}", data)
        ModelFile.objects.create(
            version=version, name=file_name, role=role, source_key=stored["object_key"], **stored
        )
    return version


@pytest.fixture
def text_version(team, tmp_path):
    data = _token_version(team, tmp_path, "plays")
    return _version(team, _job(team, dataset_version_id=data.pk), _model_files(tmp_path))


def _post(client, project, params):
    return client.post(
        f"/api/v1/projects/{project.pk}/jobs/",
        {"kind": "evaluate", "params": params},
        format="json",
    )


def test_an_evaluation_is_recorded_with_its_job_and_filled_when_it_succeeds(
    team, api, text_version, run_on_worker
):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelEvaluation

    response = _post(
        api(team.engineer), team.project, {"model_version_id": text_version.pk, **QUICK}
    )
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.queue == "cpu" and job.params["task"] == "text-generation"
    assert job.params["top_k"] == 50  # the engine's defaults, filled in
    names = job.params["input_names"]
    assert {"model/model.safetensors", "model/config.json", "model/tokenizer.json"} <= set(names)
    assert "eval/val_00000.bin" in names and "train/train_00000.bin" in names
    assert "eval/train_00000.bin" not in names and "train/val_00000.bin" not in names
    evaluation = ModelEvaluation.objects.get(job=job)
    assert evaluation.version == text_version and evaluation.finished_at is None

    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    evaluation.refresh_from_db()
    assert evaluation.finished_at is not None
    for key in TEXT_FIGURES:
        assert isinstance(evaluation.metrics[key], float), key
    assert len(evaluation.details["samples"]) == 3
    assert evaluation.details["training_dataset_version_id"] == job.params["dataset_version_id"]
    event = AuditEvent.objects.get(action="model_version.evaluated")
    assert (event.artifact_type, event.artifact_id) == ("modelversion", str(text_version.pk))
    assert event.payload["metrics"] == evaluation.metrics


def test_a_failed_evaluation_stays_unfinished_and_says_why(team, api, tmp_path, run_on_worker):
    from controlplane.jobs.models import Job

    data = _token_version(team, tmp_path, "short", val=["too short"])
    version = _version(team, _job(team, dataset_version_id=data.pk), _model_files(tmp_path))
    response = _post(api(team.engineer), team.project, {"model_version_id": version.pk, **QUICK})
    job = run_on_worker(Job.objects.get(pk=response.json()["id"]))
    assert job.state == "failed" and "larger val_fraction" in job.error
    evaluation = job.model_evaluation
    assert evaluation.finished_at is None and evaluation.metrics == {}


def test_by_default_a_model_is_evaluated_on_the_data_it_was_pretrained_on(team, tmp_path):
    from controlplane.jobs.services import job_create

    data = _token_version(team, tmp_path, "plays")
    pretrain = _job(team, dataset_version_id=data.pk)
    sft = _job(team, kind="sft", base_job_id=pretrain.pk, dataset_version_id=None)
    dpo = _job(team, kind="dpo", base_job_id=sft.pk)
    version = _version(team, dpo, _model_files(tmp_path))
    job = job_create(
        project=team.project,
        kind="evaluate",
        actor=team.engineer,
        params={"model_version_id": version.pk},
    )
    assert job.params["dataset_version_id"] == data.pk
    assert job.params["training_dataset_version_id"] == data.pk
    # An explicit version is evaluated on; memorisation still reads the training data.
    other = _token_version(team, tmp_path, "sonnets")
    job = job_create(
        project=team.project,
        kind="evaluate",
        actor=team.engineer,
        params={"model_version_id": version.pk, "dataset_version_id": other.pk},
    )
    assert job.params["dataset_version_id"] == other.pk
    assert job.params["training_dataset_version_id"] == data.pk
    by_name = dict(zip(job.params["input_names"], job.inputs, strict=True))
    assert "sonnets" in by_name["eval/val_00000.bin"]["uri"]
    assert "plays" in by_name["train/train_00000.bin"]["uri"]


def test_bad_requests_name_the_field_and_other_projects_versions_are_not_found(
    team, api, tmp_path, text_version, make_ready_version
):
    from controlplane.datasets.services import dataset_create
    from controlplane.registry.models import ModelEvaluation

    client = api(team.engineer)

    def fields(params):
        response = _post(client, team.project, params)
        assert response.status_code == 400, response.content
        return response.json()["error"]["fields"]

    assert fields({})["params.model_version_id"] == ["this field is required"]
    assert "integer" in fields({"model_version_id": "v1"})["params.model_version_id"][0]
    # Another project's version: the same answer as a version that does not exist.
    theirs_data = _token_version(team, tmp_path, "theirs", project=team.other_project)
    theirs = _version(
        team,
        _job(team, project=team.other_project, dataset_version_id=theirs_data.pk),
        _model_files(tmp_path),
        name="theirs",
    )
    assert fields({"model_version_id": theirs.pk})["params.model_version_id"] == [
        f"no model version {theirs.pk} in this project"
    ]
    for missing in (999999, 2**70):
        assert fields({"model_version_id": missing})["params.model_version_id"] == [
            f"no model version {missing} in this project"
        ]
    registering = _version(team, text_version.source_job, {}, state="registering")
    assert (
        "wait for its registration"
        in fields({"model_version_id": registering.pk})["params.model_version_id"][0]
    )
    raw = make_ready_version(
        dataset_create(
            project=team.project, actor=team.engineer, name="Raw", slug="raw", kind="text"
        ),
        team.engineer,
        {"plays.txt": b"O Romeo, Romeo"},
    )
    problem = fields({"model_version_id": text_version.pk, "dataset_version_id": raw.pk})
    assert "no token shards" in problem["params.dataset_version_id"][0]
    assert "params.samples" in fields({"model_version_id": text_version.pk, "samples": 0})
    assert fields({"model_version_id": text_version.pk, "epochs": 3})["params.epochs"] == [
        "unknown parameter"
    ]
    assert (
        _post(api(team.viewer), team.project, {"model_version_id": text_version.pk}).status_code
        == 403
    )
    assert not ModelEvaluation.objects.exists()  # nothing half-made


def test_a_text_version_whose_training_data_is_unknown_must_name_a_dataset(team, tmp_path):
    from controlplane.jobs.requests import JobRequestError
    from controlplane.jobs.services import job_create

    version = _version(team, _job(team), _model_files(tmp_path))  # no dataset_version_id
    with pytest.raises(JobRequestError) as error:
        job_create(
            project=team.project,
            kind="evaluate",
            actor=team.engineer,
            params={"model_version_id": version.pk},
        )
    assert "name a token-shard dataset_version_id" in error.value.errors["dataset_version_id"][0]
    data = _token_version(team, tmp_path, "plays")
    job = job_create(
        project=team.project,
        kind="evaluate",
        actor=team.engineer,
        params={"model_version_id": version.pk, "dataset_version_id": data.pk},
    )
    assert job.params["training_dataset_version_id"] is None
    assert not any(name.startswith("train/") for name in job.params["input_names"])


def test_an_image_version_is_evaluated_on_the_digits_and_takes_no_dataset(team, tmp_path):
    from controlplane.jobs.requests import JobRequestError
    from controlplane.jobs.services import job_create

    version = _version(
        team,
        _job(team, kind="gan"),
        {"checkpoint.pt": ("checkpoint", b"a checkpoint")},
        task="image-generation",
        name="digits",
    )
    job = job_create(
        project=team.project,
        kind="evaluate",
        actor=team.engineer,
        params={"model_version_id": version.pk, "per_class": 20},
    )
    assert job.params["task"] == "image-generation" and job.params["per_class"] == 20
    assert job.params["input_names"] == ["model/checkpoint.pt"]
    assert job.model_evaluation.version == version
    with pytest.raises(JobRequestError) as error:
        job_create(
            project=team.project,
            kind="evaluate",
            actor=team.engineer,
            params={"model_version_id": version.pk, "dataset_version_id": 1},
        )
    assert "built-in digits" in error.value.errors["dataset_version_id"][0]


def test_compare_lines_up_two_evaluations_with_deltas():
    from controlplane.registry.evaluations import compare
    from controlplane.registry.models import ModelEvaluation

    old = ModelEvaluation(metrics={"val_loss": 2.0, "toxicity_share": 0.1, "samples": 64.0})
    new = ModelEvaluation(
        metrics={"val_loss": 1.5, "toxicity_share": 0.1, "pii_share": 0.0, "samples": 64.0}
    )
    rows = {row["metric"]: row for row in compare([old, new])}
    assert [row["metric"] for row in compare([old, new])][:3] == [
        "val_loss",
        "toxicity_share",
        "pii_share",
    ]
    assert rows["val_loss"] == {
        "metric": "val_loss",
        "values": [2.0, 1.5],
        "delta": -0.5,
        "direction": "lower",
        "better": True,
    }
    assert rows["toxicity_share"]["delta"] == 0 and rows["toxicity_share"]["better"] is None
    assert rows["pii_share"]["values"] == [None, 0.0] and rows["pii_share"]["delta"] is None
    assert rows["samples"]["direction"] is None
    images = compare(
        [
            ModelEvaluation(metrics={"recognition": 0.9, "recognition_3": 0.8, "frechet": 4.0}),
            ModelEvaluation(metrics={"recognition": 0.8, "recognition_3": 0.9, "frechet": 3.0}),
        ]
    )
    better = {row["metric"]: row["better"] for row in images}
    assert better == {"recognition": False, "frechet": True, "recognition_3": True}


def test_only_finite_numbers_reach_the_metrics(team, tmp_path, text_version):
    from controlplane.jobs.services import job_create
    from controlplane.registry.evaluations import evaluation_record

    job = job_create(
        project=team.project,
        kind="evaluate",
        actor=team.engineer,
        params={"model_version_id": text_version.pk},
    )
    audits = evaluation_record(
        job,
        {
            "metrics": {"val_loss": 1.5, "bad": float("nan"), "flag": True, "name": "x"},
            "details": {"kind": "text"},
        },
    )
    evaluation = job.model_evaluation
    evaluation.refresh_from_db()
    assert evaluation.metrics == {"val_loss": 1.5}
    assert audits[0]["action"] == "model_version.evaluated"
    assert audits[0]["artifact"] == text_version


EVALUATE_RESULT = {
    "metrics": {"val_loss": 2.5, "perplexity": 12.18, "toxicity_share": 0.0, "samples": 2},
    "details": {
        "samples": [{"prompt": "ROMEO:", "text": " and so", "toxicity": 0.0, "pii": {}}],
        "seconds": {"loss": 1.2, "samples": 3.4},
    },
}


@pytest.mark.parametrize("state", ["queued", "running", "succeeded", "failed", "cancelled"])
def test_an_evaluate_jobs_page_renders_in_every_state_for_every_role(team, client, state):
    from django.urls import reverse

    from controlplane.jobs.models import Job

    job = Job.objects.create(
        project=team.project,
        kind="evaluate",
        state=state,
        params={"model_version_id": 1, "samples": 2},
        created_by=team.engineer,
        result=EVALUATE_RESULT if state == "succeeded" else None,
        error="the eval split is shorter than one window" if state == "failed" else "",
    )
    url = reverse("job-detail", args=[team.project.pk, job.pk])
    for user in (team.owner, team.engineer, team.viewer, team.compliance):
        client.force_login(user)
        response = client.get(url)
        assert response.status_code == 200, (user.username, state)
        assert b"evaluate" in response.content
    client.force_login(team.outsider)
    assert client.get(url).status_code == 404
