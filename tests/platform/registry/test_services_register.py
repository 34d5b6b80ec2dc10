"""Registering a version: the rules, the server-side copy and read-back, the lineage."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.registry.errors import Conflict, InvalidRequest, NotFound
from controlplane.registry.models import FileRole, ModelVersion, VersionState
from controlplane.registry.services import (
    FINISH_TASK,
    finish_registration,
    registry_sweep,
    version_register,
)
from controlplane.storage import object_store
from tests.platform.registry.conftest import CONFIG, TEXT_PARAMETERS, checkpoint_bytes

pytestmark = pytest.mark.django_db


def register(team, job, name="gpt", **kwargs):
    return version_register(
        project=team.project, actor=team.engineer, job=job, model_name=name, **kwargs
    )


def test_register_writes_rows_then_the_control_task_copies_and_verifies(
    team, make_model_job, sent_jobs, commit_hooks, finish_sent, audit_actions
):
    job = make_model_job("pretrain", result={"val_loss": 1.5, "metrics": {"lr": 0.01}})

    version = register(team, job, description="first")
    assert sent_jobs == []  # sent once the registration is committed
    commit_hooks()

    assert version.state == VersionState.REGISTERING
    assert version.number == 1 and version.model.task == "text-generation"
    assert [(name, args) for name, args, _ in sent_jobs] == [(FINISH_TASK, [version.pk])]
    files = {f.name: f for f in version.files.all()}
    assert {n: f.role for n, f in files.items()} == {
        "config.json": FileRole.CONFIG,
        "model.safetensors": FileRole.WEIGHTS,
        "tokenizer.json": FileRole.TOKENIZER,
    }
    weights = files["model.safetensors"]
    assert weights.object_key == version.object_prefix + "model.safetensors"
    assert weights.source_key.endswith("/model/model.safetensors")
    assert not object_store().exists(weights.object_key)  # nothing copied on the web side
    assert version.metrics == {"val_loss": 1.5, "lr": 0.01}

    (finished,) = finish_sent()

    assert finished.state == VersionState.READY and finished.ready_at is not None
    assert finished.parameter_count == TEXT_PARAMETERS
    assert finished.architecture["format"] == "safetensors"
    assert finished.architecture["config"]["n_layer"] == CONFIG["n_layer"]
    assert finished.architecture["dtypes"] == ["F32"]
    for file in finished.files.all():
        data = object_store().get_bytes(file.object_key)
        assert hashlib.sha256(data).hexdigest() == file.sha256
        assert file.verified_at is not None
    assert audit_actions(team.project, "model_version.") == [
        "model_version.registering",
        "model_version.registered",
    ]
    assert finished.model.mlflow_state == "pending"


def test_finish_is_idempotent(team, make_model_job, finish_sent, audit_actions):
    version = register(team, make_model_job())
    finish_sent()

    again = finish_registration(version.pk)

    assert again.state == VersionState.READY
    assert audit_actions(team.project, "model_version.registered") == ["model_version.registered"]


def test_a_copy_already_there_is_not_copied_again(team, make_model_job, monkeypatch):
    version = register(team, make_model_job())
    store = object_store()
    for file in version.files.all():
        store.copy(file.source_key, file.object_key)
    copies = []
    monkeypatch.setattr(type(store), "copy", lambda self, a, b: copies.append(a))

    assert finish_registration(version.pk).state == VersionState.READY
    assert copies == []


def test_versions_are_numbered_and_a_job_registers_once(team, make_model_job):
    first = register(team, make_model_job())
    second = register(team, make_model_job())

    assert (first.number, second.number) == (1, 2)
    with pytest.raises(Conflict, match=f"job {first.source_job_id} is already registered"):
        register(team, first.source_job)


def test_a_job_that_did_not_succeed_is_refused_naming_its_state(team, make_model_job):
    job = make_model_job(state="failed")

    with pytest.raises(InvalidRequest, match=f"job {job.pk} is failed") as caught:
        register(team, job)

    assert caught.value.status == 400
    assert not ModelVersion.objects.exists()


def test_a_job_of_another_project_is_not_found(team, make_model_job):
    job = make_model_job(project=team.other_project, user=team.outsider)

    with pytest.raises(NotFound) as caught:
        register(team, job)
    assert caught.value.status == 404


def test_a_job_without_model_files_is_refused(team, make_model_job):
    job = make_model_job(files=False)

    with pytest.raises(InvalidRequest, match="published no model"):
        register(team, job)


def test_a_kind_that_makes_no_model_is_refused(team, make_model_job):
    job = make_model_job("data_pipeline", files=False)

    with pytest.raises(InvalidRequest, match="data_pipeline job, which makes no model"):
        register(team, job)
    with pytest.raises(InvalidRequest, match="reward job: its reward model scores text"):
        register(team, make_model_job("reward", files=False))


def test_a_vision_job_registers_its_latest_checkpoint(team, make_model_job, finish_sent):
    job = make_model_job("gan")

    version = register(team, job, name="digits")
    (file,) = version.files.all()
    assert (file.name, file.role) == ("checkpoint.pt", FileRole.CHECKPOINT)
    assert file.source_key.endswith("step_000007.pt")
    finish_sent()
    version.refresh_from_db()

    assert version.model.task == "image-generation"
    assert version.state == VersionState.READY
    assert version.parameter_count == checkpoint_bytes()[1]
    assert version.architecture["kind"] == "gan"
    assert version.architecture["config"]["model"] == {"z_dim": 16}


def test_the_model_task_must_match_the_job(team, make_model_job):
    register(team, make_model_job("pretrain"), name="gpt")

    with pytest.raises(InvalidRequest, match="text-generation model; job .* makes image"):
        register(team, make_model_job("vae"), name="gpt")


def test_an_absent_model_is_not_created_on_request(team, make_model_job):
    with pytest.raises(NotFound, match="no model named 'nope'"):
        register(team, make_model_job(), name="nope", create_model=False)


def test_a_bad_model_name_is_refused(team, make_model_job):
    with pytest.raises(InvalidRequest) as caught:
        register(team, make_model_job(), name="no spaces/please")
    assert "name" in caught.value.fields


def test_a_tampered_object_refuses_the_version_and_is_audited(
    team, make_model_job, finish_sent, audit_actions
):
    from controlplane.audit.models import AuditEvent

    job = make_model_job()
    version = register(team, job)
    weights = job.artifacts.get(name="model/model.safetensors")
    path = object_store().bucket_dir.joinpath(*weights.object_key.split("/"))
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")  # one byte changed after the job

    (refused,) = finish_sent()

    assert refused.state == VersionState.REFUSED
    assert "model.safetensors" in refused.refused_reason
    assert "sha256" in refused.refused_reason
    assert list(object_store().list(version.object_prefix)) == []  # copies removed
    assert audit_actions(team.project, "model_version.") == [
        "model_version.registering",
        "model_version.refused",
    ]
    event = AuditEvent.objects.get(action="model_version.refused")
    assert "sha256" in event.payload["problems"][0]
    # A refused version does not block registering the job again (once it is fixed).
    assert register(team, job).number == 2


def test_a_missing_source_object_refuses_the_version(team, make_model_job, finish_sent):
    job = make_model_job()
    version = register(team, job)
    object_store().delete(job.artifacts.get(name="model/tokenizer.json").object_key)

    finish_sent()
    version.refresh_from_db()

    assert version.state == VersionState.REFUSED
    assert "tokenizer.json" in version.refused_reason and "missing" in version.refused_reason


def test_unreadable_weights_refuse_the_version(team, make_model_job, put_artifact, finish_sent):
    job = make_model_job(files=False)
    put_artifact(job, "model/model.safetensors", b"not a safetensors file at all")
    put_artifact(job, "model/config.json", b"{}")
    put_artifact(job, "model/tokenizer.json", b"{}")
    version = register(team, job)

    finish_sent()
    version.refresh_from_db()

    assert version.state == VersionState.REFUSED
    assert "safetensors" in version.refused_reason


def test_a_broker_outage_leaves_the_registration_to_the_sweep(
    team, make_model_job, monkeypatch, commit_hooks
):
    from controlplane.celery_app import app

    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", down)
    version = register(team, make_model_job())
    commit_hooks()  # the send fails and is logged: the registration still stands
    assert version.state == VersionState.REGISTERING

    assert registry_sweep() == []  # too recent: its task may still be on its way
    ModelVersion.objects.filter(pk=version.pk).update(
        created_at=timezone.now() - timedelta(seconds=31)
    )
    assert registry_sweep() == [version.pk]
    version.refresh_from_db()
    assert version.state == VersionState.READY


def test_lineage_goes_through_base_jobs_and_dataset_versions(team, make_model_job, ready_version):
    from controlplane.datasets.models import Dataset, DatasetVersion

    def dataset(slug, **kwargs):
        return Dataset.objects.create(
            project=team.project,
            name=slug,
            slug=slug,
            kind="text",
            created_by=team.engineer,
            **kwargs,
        )

    plays = dataset("plays", license="CC0", source="https://example.org/plays")
    pairs = dataset("pairs", license="MIT")
    raw = DatasetVersion.objects.create(
        dataset=plays, number=1, state="ready", created_by=team.engineer
    )
    pipeline = make_model_job("data_pipeline", params={"dataset_version_id": raw.pk}, files=False)
    tokens = DatasetVersion.objects.create(
        dataset=plays, number=2, state="ready", created_by=team.engineer, produced_by=pipeline
    )
    tokens.parents.set([raw])
    pair_version = DatasetVersion.objects.create(
        dataset=pairs, number=1, state="ready", created_by=team.engineer
    )
    pretrain = make_model_job("pretrain", params={"dataset_version_id": tokens.pk})
    sft = make_model_job(
        "sft", params={"base_job_id": pretrain.pk, "dataset_version_id": pair_version.pk}
    )
    dpo = make_model_job("dpo", params={"base_job_id": sft.pk})
    sft_version = ready_version("gpt", job=sft)

    version = ready_version("gpt", job=dpo)

    assert {j.pk for j in version.lineage_jobs.all()} == {
        dpo.pk,
        sft.pk,
        pretrain.pk,
        pipeline.pk,
    }
    assert {v.pk for v in version.dataset_versions.all()} == {raw.pk, tokens.pk, pair_version.pk}
    assert version.base_version == sft_version
    nodes = {n["id"]: n for n in version.lineage["nodes"]}
    assert nodes[f"dv:{raw.pk}"] | {"license": "CC0"} == nodes[f"dv:{raw.pk}"]
    assert nodes[f"dv:{raw.pk}"]["source"] == "https://example.org/plays"
    assert nodes[f"job:{pipeline.pk}"]["kind"] == "data_pipeline"
    edges = {tuple(e) for e in version.lineage["edges"]}
    assert {
        (f"dv:{raw.pk}", f"dv:{tokens.pk}"),
        (f"job:{pipeline.pk}", f"dv:{tokens.pk}"),
        (f"dv:{raw.pk}", f"job:{pipeline.pk}"),
        (f"dv:{tokens.pk}", f"job:{pretrain.pk}"),
        (f"job:{pretrain.pk}", f"job:{sft.pk}"),
        (f"dv:{pair_version.pk}", f"job:{sft.pk}"),
        (f"job:{sft.pk}", f"job:{dpo.pk}"),
        (f"job:{dpo.pk}", f"mv:{version.pk}"),
        (f"job:{sft.pk}", f"mv:{sft_version.pk}"),
    } <= edges


def test_a_checkpoint_pickle_never_runs_code(team, make_model_job, put_artifact, tmp_path):
    """The checkpoint reader builds placeholders only: a pickle that would run a command
    when loaded by torch.load(weights_only=False) runs nothing here."""
    import io
    import os
    import pickle
    import zipfile

    marker = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("archive/data.pkl", pickle.dumps({"state": {"generator": Hostile()}}))
    job = make_model_job("diffusion", files=False)
    put_artifact(job, "checkpoints/step_000001.pt", archive.getvalue(), kind="checkpoint", step=1)
    version = register(team, job, name="digits")

    finished = finish_registration(version.pk)

    assert not marker.exists()
    assert finished.state == VersionState.REFUSED
    assert "holds no network weights" in finished.refused_reason


def test_a_registering_version_cannot_be_deleted(team, make_model_job):
    from controlplane.registry.services import version_delete

    version = register(team, make_model_job())
    with pytest.raises(Conflict, match="still registering"):
        version_delete(version=version, actor=team.engineer)


def test_the_control_tasks_run_and_the_sweep_is_on_the_beat(team, make_model_job, settings):
    from controlplane.celery_app import app
    from controlplane.registry import tasks

    assert settings.CELERY_BEAT_SCHEDULE["registry-sweep"]["task"] == "control.registry_sweep"
    assert {FINISH_TASK, "control.registry_sweep"} <= set(app.tasks)
    version = register(team, make_model_job())

    assert tasks.registry_finish_registration.apply(args=[version.pk]).get() == "ready"
    assert tasks.registry_sweep_task.apply().get() == []


def test_a_store_outage_leaves_the_version_registering_for_the_sweep(
    team, make_model_job, monkeypatch, audit_actions
):
    from controlplane.registry import registration
    from tests.workers.storage.test_retrying import _refused
    from workers.storage.retrying import StorageUnavailableError

    version = register(team, make_model_job())
    store = object_store()
    monkeypatch.setattr(registration, "STORE_PATIENCE_SECONDS", 0.2)

    def down(*args, **kwargs):
        raise _refused()

    working = type(store).copy
    monkeypatch.setattr(type(store), "copy", down)
    with pytest.raises(StorageUnavailableError):
        finish_registration(version.pk)
    version.refresh_from_db()
    assert version.state == VersionState.REGISTERING
    assert audit_actions(team.project, "model_version.") == ["model_version.registering"]

    monkeypatch.setattr(type(store), "copy", working)  # the store is back
    assert finish_registration(version.pk).state == VersionState.READY
