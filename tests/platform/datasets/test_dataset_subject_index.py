"""An uploaded version of a dataset with a subject field gets a subject index from the
control worker: the upload only sends the task; the worker streams the records once and
attaches the index (keyed with the project's current key) to the version."""

from __future__ import annotations

import gzip
import json

import pytest

pytestmark = pytest.mark.django_db

PEOPLE = ["ann@example.com", "bob@example.com", "carl@example.com"]


def _log(n: int = 9) -> bytes:
    lines = [json.dumps({"text": f"ticket {i}", "customer": PEOPLE[i % 3]}) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def _dataset(team, slug="support", subject_field="customer"):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project,
        actor=team.engineer,
        name=slug.title(),
        slug=slug,
        kind="text",
        subject_field=subject_field,
    )


def _uploaded(team, make_ready_version, capture, dataset, files):
    with capture(execute=True):
        return make_ready_version(dataset, team.engineer, files)


def test_an_upload_sends_the_index_task_and_the_worker_attaches_the_index(
    team, make_ready_version, django_capture_on_commit_callbacks, sent_jobs
):
    from controlplane.audit.models import AuditEvent
    from controlplane.datasets.subject_index import INDEX_TASK, version_subject_index
    from controlplane.gdpr.erasure import _search_of
    from controlplane.storage import object_store
    from controlplane.subject_keys import project_subject_key, subject_key_id
    from workers.serve.protocol import subject_hash

    files = {"log.jsonl": _log(), "more.jsonl.gz": gzip.compress(_log(3)), "notes.txt": b"hi\n"}
    version = _uploaded(
        team, make_ready_version, django_capture_on_commit_callbacks, _dataset(team), files
    )
    assert [(name, args) for name, args, _queue in sent_jobs] == [(INDEX_TASK, [version.pk])]
    assert _search_of(version) == "field"  # until the worker is done

    assert version_subject_index(version.pk) == "indexed"
    version.refresh_from_db()
    rows = {f.name: f for f in version.files.all()}
    assert rows["subject_index.npy"].role == rows["subject_index.json"].role == "index"
    assert rows["subject_index.json"].object_key.startswith(version.prefix)
    assert version.byte_count == sum(f.size for f in rows.values())
    manifest = json.loads(object_store().get_bytes(rows["subject_index.json"].object_key))
    key = project_subject_key(team.project)
    assert manifest["subject_key_id"] == subject_key_id(key) and manifest["subject_keyed"]
    assert {f["name"]: f["lines"] for f in manifest["files"]} == {
        "log.jsonl": 9,
        "more.jsonl.gz": 3,
    }
    assert manifest["entries"] == 12
    event = AuditEvent.objects.get(action="dataset_version.subject_indexed")
    assert event.payload["key_id"] == manifest["subject_key_id"]
    # Hashes only: no identifier in the index or its audit event.
    stored = object_store().get_bytes(rows["subject_index.npy"].object_key)
    assert bytes.fromhex(subject_hash(key, "Ann@Example.com")) in stored
    assert not any(p.encode() in stored for p in PEOPLE)
    assert "example.com" not in json.dumps(event.payload)
    assert _search_of(version) == "index"
    # Run twice (a message delivered again): nothing is added.
    assert version_subject_index(version.pk) == "not needed"
    assert version.files.count() == 5


def test_no_index_without_a_subject_field_or_jsonl(
    team, make_ready_version, django_capture_on_commit_callbacks, sent_jobs
):
    from controlplane.datasets.subject_index import version_subject_index

    plain = _uploaded(
        team,
        make_ready_version,
        django_capture_on_commit_callbacks,
        _dataset(team, "plain", subject_field=""),
        {"log.jsonl": _log()},
    )
    text = _uploaded(
        team,
        make_ready_version,
        django_capture_on_commit_callbacks,
        _dataset(team, "letters"),
        {"letters.txt": b"dear ann\n"},
    )
    assert sent_jobs == []
    assert version_subject_index(plain.pk) == version_subject_index(text.pk) == "not needed"


def test_a_version_removed_while_indexing_keeps_no_index_object(
    team, make_ready_version, django_capture_on_commit_callbacks, monkeypatch
):
    from controlplane.datasets import subject_index
    from controlplane.datasets.models import DatasetVersion
    from controlplane.storage import object_store

    version = _uploaded(
        team,
        make_ready_version,
        django_capture_on_commit_callbacks,
        _dataset(team),
        {"a.jsonl": _log()},
    )
    real = subject_index._build

    def erased_meanwhile(*args, **kwargs):
        manifest = real(*args, **kwargs)
        DatasetVersion.objects.filter(pk=version.pk).update(state="erased")
        return manifest

    monkeypatch.setattr(subject_index, "_build", erased_meanwhile)
    with django_capture_on_commit_callbacks(execute=True):
        assert subject_index.version_subject_index(version.pk) == "gone meanwhile"
    assert not list(object_store().list(f"{version.prefix}subject-index/"))
    assert not version.files.filter(role="index").exists()


def test_the_pipeline_is_not_given_the_index_as_data(
    team, make_ready_version, django_capture_on_commit_callbacks
):
    from controlplane.datasets.subject_index import version_subject_index
    from controlplane.jobs.kinds import _validate_data_pipeline

    version = _uploaded(
        team,
        make_ready_version,
        django_capture_on_commit_callbacks,
        _dataset(team),
        {"a.jsonl": _log()},
    )
    version_subject_index(version.pk)
    request = _validate_data_pipeline(
        team.project, {"dataset_version_id": version.pk, "pipeline": {"stages": ["normalize"]}}
    )
    assert request.params["input_names"] == ["a.jsonl"] and len(request.inputs) == 1


def test_the_control_worker_knows_the_task():
    from controlplane.celery_app import app
    from controlplane.datasets.subject_index import INDEX_TASK

    app.loader.import_default_modules()  # what the worker does at start (autodiscovery)
    assert INDEX_TASK in app.tasks
