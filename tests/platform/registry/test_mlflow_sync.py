"""The MLflow registry mirror against a real `mlflow server` (SQLite, served artifacts).

What a user's own mlflow client sees after a sync: the model, each ready version with tags
linking back to us, the aliases; `models:/<name>@production` loads and generates with the
engine. MLflow down: the registry's state says so and the next run catches up, without
duplicates. Rows are made with the ORM (the registration services are another part).
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.enginemodels import text_export, vision_checkpoint
from tests.mlflowserver import mlflow_server  # noqa: F401 (a fixture)

SLOW = pytest.mark.slow  # a real mlflow server: about a minute to start on two cores
_names = itertools.count(1)
ROLES = {
    "model.safetensors": "weights",
    "engine_model.safetensors": "weights",
    "config.json": "config",
    "tokenizer.json": "tokenizer",
}


@pytest.fixture
def client(mlflow_server, monkeypatch):  # noqa: F811 - the fixture imported above
    """The tracking URI as the control worker and a user's client both read it."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=mlflow_server.url)


@pytest.fixture
def registry(team, make_ready_version, make_model_job, tmp_path):
    """Builders of registry rows, with the version's files in the local object store."""
    from controlplane.datasets.services import dataset_create
    from controlplane.registry.models import ModelAlias, ModelFile, ModelVersion, RegisteredModel
    from controlplane.storage import object_store

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    data_version = make_ready_version(dataset, team.engineer, {"hamlet.txt": b"To be\n"})

    class Registry:
        project = team.project
        dataset_version = data_version

        @staticmethod
        def model(task: str = "text-generation", description: str = "Shakespeare, tiny"):
            # MLflow's names outlive each test's rollback: one name per model, ever.
            name = f"sync-{task[:4]}-{next(_names)}-{timezone.now():%H%M%S%f}"
            return RegisteredModel.objects.create(
                project=team.project,
                name=name,
                task=task,
                description=description,
                created_by=team.engineer,
            )

        @staticmethod
        def version(model, folder: Path, state: str = "ready"):
            job = make_model_job("pretrain", files=False, result={})
            number = model.last_version_number + 1
            RegisteredModel.objects.filter(pk=model.pk).update(last_version_number=number)
            model.last_version_number = number
            version = ModelVersion.objects.create(
                model=model,
                number=number,
                state=state,
                source_job=job,
                source_attempt=1,
                metrics={"val_loss": 1.25, "step": 8},
                description=f"version {number}",
                created_by=team.engineer,
                ready_at=timezone.now(),
            )
            version.dataset_versions.add(data_version)
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                data = path.read_bytes()
                key = f"{version.object_prefix}{path.name}"
                object_store().put_bytes(key, data)
                ModelFile.objects.create(
                    version=version,
                    name=path.name,
                    role="checkpoint" if path.suffix == ".pt" else ROLES.get(path.name, "other"),
                    source_key=f"{job.output_prefix}attempt-1/model/{path.name}",
                    object_key=key,
                    sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data),
                    verified_at=timezone.now(),
                )
            return version

        @staticmethod
        def alias(model, name: str, version):
            alias, _ = ModelAlias.objects.update_or_create(
                model=model,
                name=name,
                defaults={
                    "version": version,
                    "moved_by": team.engineer,
                    "moved_at": timezone.now(),
                },
            )
            return alias

    return Registry()


@pytest.fixture
def text_files(tmp_path) -> Path:
    return text_export(tmp_path / "gpt")


def _sync(model) -> str:
    from controlplane.registry.mlflow_sync import sync_model

    outcome = sync_model(model.pk)
    model.refresh_from_db()
    return outcome


def _mlflow_versions(client, name: str) -> list:
    return list(client.search_model_versions(f"name = '{name}'"))


@SLOW
def test_a_synced_model_is_in_mlflow_and_production_generates_with_the_engine(
    client, registry, text_files
):
    import mlflow

    from engine.infer.generate import Generator, SamplingParams
    from engine.infer.loading import load_for_generation

    model = registry.model()
    v1 = registry.version(model, text_files)
    registry.alias(model, "production", v1)

    assert _sync(model) == "synced"
    assert model.mlflow_state == "synced" and model.mlflow_error == ""
    assert model.mlflow_synced_at is not None and model.mlflow_attempts == 0
    v1.refresh_from_db()
    assert v1.mlflow_version == "1"

    theirs = client.get_registered_model(model.name)
    assert theirs.description == "Shakespeare, tiny"
    assert theirs.tags["controlplane.project"] == "alpha"
    assert theirs.tags["controlplane.model_id"] == str(model.pk)
    production = client.get_model_version_by_alias(model.name, "production")
    assert production.version == "1"
    weights = v1.files.get(name="model.safetensors")
    assert production.tags["controlplane.version_id"] == str(v1.pk)
    assert production.tags["controlplane.source_job_id"] == str(v1.source_job_id)
    assert production.tags["controlplane.dataset_version_ids"] == str(registry.dataset_version.pk)
    assert production.tags["controlplane.weights_sha256"] == weights.sha256
    assert production.tags["controlplane.project"] == "alpha"
    run = client.get_run(production.run_id)
    assert run.data.metrics["val_loss"] == 1.25
    assert client.get_experiment(run.info.experiment_id).name == "alpha/registry"

    # A user's own client: the pyfunc generates what the engine generates from the files.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.name}@production")
    prompts = ["To be", "The slings"]
    texts = pyfunc.predict(prompts, params={"max_tokens": 10, "temperature": 0.0})
    engine_model, tokenizer = load_for_generation(text_files)
    expected = Generator(engine_model, tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=10, temperature=0.0)
    )
    assert texts == [g.text for g in expected.generations]
    assert all(len(text) > 0 for text in texts)

    # Again, and again after losing our record of the MLflow number (a crash between
    # creating the version and saving its number): found by its tag, never duplicated.
    assert _sync(model) == "synced"
    type(v1).objects.filter(pk=v1.pk).update(mlflow_version="")
    assert _sync(model) == "synced"
    v1.refresh_from_db()
    assert v1.mlflow_version == "1"
    assert [v.version for v in _mlflow_versions(client, model.name)] == ["1"]
    # Two MLflow versions with one id (say, made by hand): the older one stays.
    client.create_model_version(
        model.name, production.source, run_id=production.run_id, tags=production.tags
    )
    assert _sync(model) == "synced"
    assert [v.version for v in _mlflow_versions(client, model.name)] == ["1"]


@SLOW
def test_an_image_model_draws_digits_through_a_users_client(client, registry, tmp_path):
    import mlflow

    checkpoint = vision_checkpoint(tmp_path / "gan")
    files = tmp_path / "files"
    files.mkdir()
    (files / checkpoint.name).write_bytes(checkpoint.read_bytes())
    model = registry.model(task="image-generation", description="digits")
    v1 = registry.version(model, files)
    registry.alias(model, "production", v1)

    assert _sync(model) == "synced"
    tags = client.get_model_version_by_alias(model.name, "production").tags
    assert tags["controlplane.weights_sha256"] == v1.files.get().sha256
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.name}@production")
    digits = list(range(10))
    images = pyfunc.predict(digits, params={"seed": 1})
    assert len(images) == 10
    assert all(len(image) == 8 and all(len(row) == 8 for row in image) for image in images)
    assert all(0.0 <= pixel <= 1.0 for image in images for row in image for pixel in row)


@SLOW
def test_mlflow_down_fails_with_the_error_then_the_next_run_catches_up_once(
    client,
    mlflow_server,  # noqa: F811 - the fixture imported above
    registry,
    text_files,
):
    from controlplane.registry.mlflow_sync import due_models, registry_sync_mlflow

    model = registry.model()
    v1 = registry.version(model, text_files)
    registry.alias(model, "production", v1)

    # The server goes away: the sync fails fast, records why, and backs off.
    mlflow_server.stop()
    try:
        assert _sync(model) == "failed"
        assert model.mlflow_state == "failed"
        assert "unreachable" in model.mlflow_error and mlflow_server.url in model.mlflow_error
        assert model.mlflow_attempts == 1
        assert model.mlflow_next_attempt_at > timezone.now()
        assert model not in due_models()  # not before its next attempt
        assert model in due_models(now=model.mlflow_next_attempt_at + timedelta(seconds=1))
        assert _sync(model) == "failed"
        assert model.mlflow_attempts == 2
        # The second wait doubles the first (10 s).
        assert model.mlflow_next_attempt_at - timezone.now() > timedelta(seconds=10)
    finally:
        mlflow_server.start()

    # The server is back; the beat's pass once the next attempt is due.
    type(model).objects.filter(pk=model.pk).update(
        mlflow_next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    assert registry_sync_mlflow() == {str(model.pk): "synced"}
    model.refresh_from_db()
    assert model.mlflow_state == "synced" and model.mlflow_error == ""
    assert model.mlflow_attempts == 0 and model.mlflow_next_attempt_at is None
    assert registry_sync_mlflow() == {}  # nothing due any more
    assert [v.version for v in _mlflow_versions(client, model.name)] == ["1"]
    assert client.get_model_version_by_alias(model.name, "production").version == "1"


@SLOW
def test_aliases_and_deletions_follow_ours(client, registry, tmp_path):
    from mlflow.exceptions import MlflowException

    from controlplane.registry.mlflow_sync import request_mlflow_sync
    from controlplane.registry.models import ModelAlias

    model = registry.model()
    v1 = registry.version(model, text_export(tmp_path / "a", seed=1))
    v2 = registry.version(model, text_export(tmp_path / "b", seed=2))
    refused = registry.version(model, text_export(tmp_path / "c", seed=3), state="refused")
    registry.alias(model, "production", v1)
    registry.alias(model, "candidate", v2)
    assert _sync(model) == "synced"
    assert client.get_model_version_by_alias(model.name, "production").version == "1"
    assert client.get_model_version_by_alias(model.name, "candidate").version == "2"
    assert sorted(v.version for v in _mlflow_versions(client, model.name)) == ["1", "2"]
    refused.refresh_from_db()
    assert refused.mlflow_version == ""  # only ready versions are mirrored

    # production moves to v2, candidate goes, v1 is deleted here; the description changes.
    registry.alias(model, "production", v2)
    ModelAlias.objects.filter(model=model, name="candidate").delete()
    type(v1).objects.filter(pk=v1.pk).update(state="deleted", deleted_at=timezone.now())
    type(model).objects.filter(pk=model.pk).update(description="Shakespeare, retrained")
    request_mlflow_sync(model)
    model.refresh_from_db()
    assert model.mlflow_state == "pending"

    assert _sync(model) == "synced"
    assert client.get_model_version_by_alias(model.name, "production").version == "2"
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(model.name, "candidate")
    with pytest.raises(MlflowException):
        client.get_model_version(model.name, "1")
    assert [v.version for v in _mlflow_versions(client, model.name)] == ["2"]
    assert client.get_registered_model(model.name).description == "Shakespeare, retrained"


@SLOW
def test_a_weights_object_that_rotted_is_not_mirrored(client, registry, text_files):
    from controlplane.storage import object_store

    model = registry.model()
    version = registry.version(model, text_files)
    weights = version.files.get(name="model.safetensors")
    object_store().delete(weights.object_key)  # replaced behind the registry's back
    object_store().put_bytes(weights.object_key, b"not the weights")
    assert _sync(model) == "failed"
    assert "no longer matches its record" in model.mlflow_error
    assert weights.object_key in model.mlflow_error
    assert _mlflow_versions(client, model.name) == []


@SLOW
def test_a_name_mlflow_already_gives_another_model_is_an_error_not_a_merge(client, registry):
    model = registry.model()
    client.create_registered_model(model.name, tags={"controlplane.model_id": "999999"})
    assert _sync(model) == "failed"
    assert "another model (id 999999" in model.mlflow_error
    assert client.get_registered_model(model.name).tags["controlplane.model_id"] == "999999"


@SLOW
def test_without_a_tracking_uri_the_embedded_sqlite_store_gets_the_mirror(
    registry, text_files, tmp_path, monkeypatch
):
    """The embedded default (MLFLOW_TRACKING_URI unset): SQLite and artifacts under the data dir."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CONTROLPLANE_DATA_DIR", str(tmp_path / "data"))
    model = registry.model()
    registry.alias(model, "production", registry.version(model, text_files))
    assert _sync(model) == "synced", model.mlflow_error
    uri = f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    version = MlflowClient(tracking_uri=uri).get_model_version_by_alias(model.name, "production")
    assert version.source.startswith((tmp_path / "data" / "mlflow-artifacts").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # a user's client on the same machine
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.name}@production")
    assert len(pyfunc.predict(["To be"], params={"max_tokens": 4})[0]) > 0


def test_a_change_marks_the_model_pending_and_nudges_the_control_worker_on_commit(
    registry, sent_jobs, django_capture_on_commit_callbacks
):
    from controlplane.registry.mlflow_sync import SYNC_TASK, request_mlflow_sync

    model = registry.model()
    type(model).objects.filter(pk=model.pk).update(
        mlflow_state="failed", mlflow_attempts=4, mlflow_next_attempt_at=timezone.now()
    )
    with django_capture_on_commit_callbacks(execute=True):
        request_mlflow_sync(model)
        assert sent_jobs == []  # not before the change commits
    model.refresh_from_db()
    assert (model.mlflow_state, model.mlflow_attempts, model.mlflow_next_attempt_at) == (
        "pending",
        0,
        None,
    )
    assert sent_jobs == [(SYNC_TASK, [model.pk], "control")]


def test_a_broker_outage_never_reaches_the_caller(
    registry, monkeypatch, django_capture_on_commit_callbacks
):
    from controlplane.celery_app import app
    from controlplane.registry.mlflow_sync import request_mlflow_sync

    def refuse(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", refuse)
    model = registry.model()
    with django_capture_on_commit_callbacks(execute=True):
        request_mlflow_sync(model)
    model.refresh_from_db()
    assert model.mlflow_state == "pending"  # the beat syncs it


def test_retries_back_off_exponentially_up_to_the_cap(settings):
    from controlplane.registry.mlflow_sync import backoff_seconds

    settings.MLFLOW_SYNC_MAX_BACKOFF_SECONDS = 600
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_seconds(7) == 600 and backoff_seconds(50) == 600


def test_the_beat_runs_the_sync_task_on_the_control_queue(settings):
    from controlplane.celery_app import app
    from controlplane.registry.mlflow_sync import SYNC_TASK

    entry = settings.CELERY_BEAT_SCHEDULE["sync-mlflow-registry"]
    assert entry["task"] == SYNC_TASK and entry["options"]["queue"] == "control"
    app.loader.import_default_modules()
    assert SYNC_TASK in app.tasks


def test_the_command_syncs_now_and_says_what_failed(registry, monkeypatch):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from tests.mlflowserver import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nobody
    model = registry.model()
    out = StringIO()
    with pytest.raises(CommandError, match="1 model\\(s\\) failed"):
        call_command(
            "registry_sync_mlflow", "--project", "alpha", "--model", model.name, stdout=out
        )
    assert f"alpha/{model.name}: failed" in out.getvalue() and "unreachable" in out.getvalue()
    model.refresh_from_db()
    assert model.mlflow_state == "failed" and model.mlflow_attempts == 1
    with pytest.raises(CommandError, match="--model needs --project"):
        call_command("registry_sync_mlflow", "--model", model.name)
    with pytest.raises(CommandError, match="no model 'nope'"):
        call_command("registry_sync_mlflow", "--project", "alpha", "--model", "nope")
