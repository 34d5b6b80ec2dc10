"""An erasure finds a person in a raw upload through the subject index built at ingestion
(method `index`), even after a key rotation; the rewritten version gets its index too,
so the next erasure finds through it and reads no record; an upload from before raw
indexes is still searched by its subject field (method `field`)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

ANN = "ann@example.com"
PEOPLE = [ANN, "bob@example.com", "carl@example.com"]


def _log() -> bytes:
    lines = [json.dumps({"text": f"ticket {i}", "customer": PEOPLE[i % 3]}) for i in range(12)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def support(team):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Support",
        slug="support",
        kind="text",
        subject_field="customer",
    )


@pytest.fixture
def reads(monkeypatch):
    """The keys of every object the worker downloads."""
    from workers.runtime import JobContext

    keys: list[str] = []
    real = JobContext.download

    def counted(self, key, target, sha256=None):
        keys.append(key)
        return real(self, key, target, sha256)

    monkeypatch.setattr(JobContext, "download", counted)
    return keys


def _erase(team, file_request, capture, run_on_worker, who=ANN):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.gdpr.services import request_approve
    from controlplane.jobs.models import Job

    request = file_request(identifiers=[{"type": "email", "value": who}])
    with capture(execute=True):
        request_approve(request=request, actor=team.compliance, reason="checked the identity")
    job = Job.objects.filter(kind="erasure").latest("pk")
    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    assert erasure_advance(request) == "completed"
    request.refresh_from_db()
    return request, job


def test_an_indexed_upload_is_erased_through_its_index_and_so_is_the_rewritten_one(
    team,
    support,
    make_ready_version,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
    reads,
):
    from controlplane.datasets.subject_index import version_subject_index
    from controlplane.storage import object_store
    from controlplane.subject_keys import subject_key_rotate

    v1 = make_ready_version(support, team.engineer, {"log.jsonl": _log()})
    assert version_subject_index(v1.pk) == "indexed"
    # Indexed under generation 1, searched after a rotation: the job has every key.
    subject_key_rotate(project=team.project, actor=team.compliance)

    request, job = _erase(team, file_request, django_capture_on_commit_callbacks, run_on_worker)
    assert [v["search"] for v in job.params["versions"]] == ["index"]
    (found,) = request.progress["findings"]
    assert found["records"] == 4 and "searched through the subject index" in found["detail"]
    (outcome,) = job.result["versions"]
    assert outcome["found"]["method"] == "index"
    v2 = job.produced_versions.get()
    files = {f.name: f for f in v2.files.all()}
    assert set(files) == {"log.jsonl", "subject_index.npy", "subject_index.json"}
    assert files["subject_index.json"].role == "index"
    manifest = json.loads(object_store().get_bytes(files["subject_index.json"].object_key))
    assert manifest["files"] == [
        {"name": "log.jsonl", "lines": 8, "sha256": files["log.jsonl"].sha256}
    ]
    assert request.certificate["residue_scan"]["clean"] is True

    # The next erasure of the same person finds through v2's index: no record is read.
    reads.clear()
    again, job = _erase(team, file_request, django_capture_on_commit_callbacks, run_on_worker)
    assert [v["id"] for v in job.params["versions"]] == [v2.pk]
    assert [v["search"] for v in job.params["versions"]] == ["index"]
    (outcome,) = job.result["versions"]
    assert outcome["found"] == {
        "method": "index",
        "records": 0,
        "files": [{"name": "log.jsonl", "records": 0}],
    }
    assert files["log.jsonl"].object_key not in reads
    assert set(reads) == {
        files["subject_index.npy"].object_key,
        files["subject_index.json"].object_key,
    }
    assert again.certificate["found_nowhere"] is True

    # Bob is in v2: found through the index, v2 rewritten with an index of its own.
    bob, job = _erase(
        team, file_request, django_capture_on_commit_callbacks, run_on_worker, who=PEOPLE[1]
    )
    assert job.result["versions"][0]["found"]["method"] == "index"
    assert job.result["versions"][0]["found"]["records"] == 4
    v3 = job.produced_versions.get()
    assert v3.files.filter(role="index").count() == 2


def test_an_upload_from_before_raw_indexes_is_searched_by_its_field(
    team,
    support,
    make_ready_version,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
):
    v1 = make_ready_version(support, team.engineer, {"log.jsonl": _log()})  # never indexed
    request, job = _erase(team, file_request, django_capture_on_commit_callbacks, run_on_worker)
    assert [v["search"] for v in job.params["versions"]] == ["field"]
    assert job.result["versions"][0]["found"]["method"] == "field"
    (found,) = request.progress["findings"]
    assert found["records"] == 4 and "searched by its subject field" in found["detail"]
    assert job.produced_versions.get().parents.get() == v1
