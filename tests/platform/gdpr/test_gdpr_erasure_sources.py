"""An approved erasure, end to end through the request, for the sources the main flow
does not hold: the subject's inference-archive records, and a dataset with no subject
field ("not indexed"), found by the bounded full-text scan."""

from __future__ import annotations

import json

import pytest

from tests.platform.gdpr.test_gdpr_erasure import ANN, _approve, _support_log
from tests.platform.serving.archive_helpers import archive, make_deployment, record

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them


def _dataset(team, make_ready_version, slug: str, files: dict[str, bytes], subject_field=""):
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project,
        actor=team.engineer,
        name=slug.title(),
        slug=slug,
        kind="text",
        subject_field=subject_field,
    )
    return make_ready_version(dataset, team.engineer, files)


def _erased(team, file_request, capture, run_on_worker):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    request = _approve(team, file_request, capture, [{"type": "email", "value": ANN}])
    job = run_on_worker(Job.objects.get(kind="erasure"))
    assert job.state == "succeeded", job.error
    assert erasure_advance(request) == "completed"
    request.refresh_from_db()
    return request, job


def test_the_subjects_inference_archive_records_are_erased_and_certified(
    team,
    make_ready_version,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
    client,
):
    from controlplane.serving.archive import read_record
    from controlplane.serving.models import ArchiveObject, InferenceRecord
    from controlplane.storage import object_store

    _dataset(team, make_ready_version, "support", _support_log(), subject_field="customer")
    deployment = make_deployment(team.project, team.engineer)
    hers = record(1, subject=ANN, request={"messages": [{"role": "user", "content": "refund?"}]})
    others = [record(0), record(2)]
    archive(deployment, [others[0], hers, others[1]])  # shared: rewritten without her
    archive(deployment, [record(3, subject=ANN)])  # hers alone: deleted whole
    old_keys = sorted(ArchiveObject.objects.values_list("object_key", flat=True))
    assert len(old_keys) == 2

    request, _job = _erased(team, file_request, django_capture_on_commit_callbacks, run_on_worker)

    section = request.certificate["archive"]
    assert section["records_removed"] == 2
    assert sorted(o["key"] for o in section["objects"]) == old_keys
    assert sorted(o["records_kept"] for o in section["objects"]) == [0, 2]
    assert all(o["deleted_versions"] for o in section["objects"])
    # Every stored version of the old objects is gone; the others' records are readable
    # from the rewritten object, and hers are in no index row.
    assert [object_store().list_versions(key) for key in old_keys] == [[], []]
    kept = InferenceRecord.objects.filter(project=team.project).order_by("created_at")
    assert [r.request_id for r in kept] == [o["id"] for o in others]
    assert [read_record(r)["id"] for r in kept] == [o["id"] for o in others]
    (rewritten,) = [o for o in section["objects"] if o["new_key"]]
    assert {r.archive_object.object_key for r in kept} == {rewritten["new_key"]}
    assert request.certificate["found_nowhere"] is False
    assert request.certificate["residue_scan"]["clean"] is True
    assert ANN not in json.dumps(request.certificate)

    client.force_login(team.compliance)
    page = f"/projects/{team.project.pk}/subject-requests/{request.pk}/certificate/"
    text = client.get(page).content.decode()
    assert "2 record(s) removed from 2 object(s)" in text and rewritten["new_key"] in text


def test_a_dataset_without_a_subject_field_is_scanned_rewritten_and_certified(
    team,
    make_ready_version,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
    client,
):
    from controlplane.storage import object_store

    lines = [
        {"text": "Refund approved; the customer will hear from us today."},
        {"text": "Call ANN@Example.com back about the parcel."},  # other case
        {"text": "Courier delayed, voucher sent."},
        {"text": "Invoice for a.n.n@example.com resent"},  # dots in the local part
        {"text": "Address label reprinted."},
    ]
    notes = _dataset(
        team,
        make_ready_version,
        "notes",
        {"notes.jsonl": "".join(json.dumps(line) + "\n" for line in lines).encode()},
    )
    assert not notes.dataset.subject_field

    request, job = _erased(team, file_request, django_capture_on_commit_callbacks, run_on_worker)

    assert [v["search"] for v in job.params["versions"]] == ["scan"]
    (new,) = job.produced_versions.all()
    assert new.note == f"derived from v1 by erasure request #{request.pk}"
    body = object_store().get_bytes(new.files.get().object_key).decode()
    assert body.count("\n") == 3 and "ann" not in body.lower()
    notes.refresh_from_db()
    assert notes.state == "erased"

    certificate = request.certificate
    (found,) = certificate["found"]
    assert (found["label"], found["method"], found["records"]) == ("notes v1", "scan", 2)
    assert found["bytes_scanned"] == len("".join(json.dumps(x) + "\n" for x in lines))
    assert found["scan_budget_bytes"] >= found["bytes_scanned"]
    assert [(e["old_label"], e["new_label"]) for e in certificate["rewritten"]] == [
        ("notes v1", "notes v2")
    ]
    assert {d["name"] for d in certificate["deleted"]} == {"notes.jsonl"}
    assert certificate["found_nowhere"] is False
    assert certificate["residue_scan"]["clean"] is True

    client.force_login(team.engineer)
    detail = client.get(f"/projects/{team.project.pk}/subject-requests/{request.pk}/")
    row = detail.content.decode().split("<td>notes v1</td>")[1].split("</tr>")[0]
    assert "not indexed — searched by a full-text scan (" in row
    assert "of 1.1 GB budget)" in row and "notes.jsonl: 2" in row
