"""An erasure's control pass killed at any point, then run again: the certificate says
what an uninterrupted run's says (same counts per version, object and archive object, no
`found_nowhere`), because every step adds to its account instead of replacing it.

Each test runs the same erasure twice, in two projects: once uninterrupted (the
baseline), once killed (an exception the pass does not catch, as a SIGKILL would leave
it) until it completes."""

from __future__ import annotations

import pytest

from tests.platform.gdpr.test_gdpr_erasure import ANN, _support_log
from tests.platform.serving.archive_helpers import archive, make_deployment, record

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

# The control steps that end by recording their name in `done` (gdpr/erasure.py).
STEPS = [
    "rebuilt",
    "deleted",
    "copies_scrubbed",
    "archive_erased",
    "models_flagged",
    "scanned",
    "released",
]
MAX_PASSES = 60


class Killed(BaseException):  # noqa: N818 - what happened to the process, not an error
    """The control worker died here (not an Exception: nothing on the way catches it)."""


def _project(team, slug: str):
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add, project_create

    project = project_create(name=slug.title(), slug=slug, actor=team.owner)
    member_add(project=project, user=team.engineer, role=Role.ENGINEER, actor=team.owner)
    member_add(project=project, user=team.compliance, role=Role.COMPLIANCE, actor=team.owner)
    return project


def _erasure_ready_to_advance(project, team, make_ready_version, run_on_worker, capture):
    """Ann in a raw dataset (4 records), in the pipeline output made from it (4), in the
    pipeline job's completion record, in two inference-archive objects (one shared with
    others, one hers alone) and in a model trained on both versions; the erasure job has
    run, the control steps have not."""
    from controlplane.datasets.services import dataset_create
    from controlplane.gdpr.services import request_approve, request_file
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create
    from tests.platform.policies.compliance_fixtures import model_version

    dataset = dataset_create(
        project=project,
        actor=team.engineer,
        name="Support",
        slug="support",
        kind="text",
        subject_field="customer",
    )
    raw = make_ready_version(dataset, team.engineer, _support_log())
    pipeline = run_on_worker(
        job_create(
            project=project,
            kind="data_pipeline",
            actor=team.engineer,
            params={
                "dataset_version_id": raw.pk,
                "val_fraction": 0.25,
                "pipeline": {"stages": ["normalize"]},
            },
        )
    )
    assert pipeline.state == "succeeded", pipeline.error
    model_version(
        project, team.engineer, name="helpdesk", datasets=[pipeline.produced_versions.get(), raw]
    )
    deployment = make_deployment(project, team.engineer)
    archive(deployment, [record(0), record(1, subject=ANN), record(2)])
    archive(deployment, [record(3, subject=ANN)])

    request = request_file(
        project=project,
        actor=team.engineer,
        kind="erasure",
        identifiers=[{"type": "email", "value": ANN}],
        legal_basis="Art. 17(1)(b): consent withdrawn",
    )
    with capture(execute=True):
        request_approve(request=request, actor=team.compliance, reason="checked the identity")
    job = run_on_worker(Job.objects.get(project=project, kind="erasure"))
    assert job.state == "succeeded", job.error
    request.refresh_from_db()
    return request


def _account(certificate: dict) -> dict:
    """What a certificate says was found, rewritten, deleted, erased and flagged: its
    counts and names, without the ids and keys that differ from project to project."""
    archive_section = certificate["archive"]
    return {
        "found": sorted((row["label"], row["records"]) for row in certificate["found"]),
        "found_nowhere": certificate["found_nowhere"],
        "rewritten": sorted(
            (e["old_label"], e["new_label"], len(e["files"])) for e in certificate["rewritten"]
        ),
        "deleted": sorted((d["name"], len(d["object_versions"])) for d in certificate["deleted"]),
        "archive_records_removed": archive_section.get("records_removed"),
        "archive_objects": sorted(
            (o["records_removed"], o["records_kept"], bool(o["new_key"]), o["deleted_versions"])
            for o in archive_section.get("objects", [])
        ),
        "models_flagged": sorted(m["label"] for m in certificate["models_flagged"]),
        "residue_scan": {
            k: certificate["residue_scan"][k]
            for k in ("clean", "hit_count", "object_versions_read")
        },
    }


def _baseline(team, make_ready_version, run_on_worker, capture) -> dict:
    from controlplane.gdpr.erasure import erasure_advance

    request = _erasure_ready_to_advance(
        _project(team, "baseline"), team, make_ready_version, run_on_worker, capture
    )
    assert erasure_advance(request) == "completed"
    request.refresh_from_db()
    account = _account(request.certificate)
    # What the comparison rests on: every source of the subject is in it.
    assert account["found"] == [("support v1", 4), ("support v2", 4)]
    assert account["archive_records_removed"] == 2 and len(account["archive_objects"]) == 2
    assert account["deleted"] and account["models_flagged"] == ["helpdesk v1"]
    assert account["found_nowhere"] is False and account["residue_scan"]["clean"] is True
    return account


def _advance_until_completed(request) -> tuple[str, int]:
    from controlplane.gdpr.erasure import erasure_advance

    for passes in range(1, MAX_PASSES + 1):
        try:
            return erasure_advance(request), passes
        except Killed:
            continue  # the control worker restarts; the task (or the beat) runs again
    raise AssertionError(f"not completed after {MAX_PASSES} passes")


def test_a_pass_killed_before_each_steps_record_certifies_what_an_uninterrupted_one_does(
    team, make_ready_version, run_on_worker, django_capture_on_commit_callbacks, monkeypatch
):
    from controlplane.gdpr import erasure

    capture = django_capture_on_commit_callbacks
    expected = _baseline(team, make_ready_version, run_on_worker, capture)
    request = _erasure_ready_to_advance(
        team.project, team, make_ready_version, run_on_worker, capture
    )
    record, killed_before = erasure._record, []

    def dies_once_per_step(request, step, **details):
        # The step's side effects are done (objects deleted, archive rewritten, flags
        # made); the pass dies before the step is on the record.
        if step in STEPS and step not in killed_before:
            killed_before.append(step)
            raise Killed(step)
        return record(request, step, **details)

    monkeypatch.setattr(erasure, "_record", dies_once_per_step)
    outcome, passes = _advance_until_completed(request)

    assert outcome == "completed" and passes == len(STEPS) + 1
    assert killed_before == STEPS
    request.refresh_from_db()
    assert _account(request.certificate) == expected
    assert request.certificate["found_nowhere"] is False
    assert request.certificate["archive"]["records_removed"] == 2
    steps = [step["name"] for step in request.progress["steps"]]
    assert len(steps) == len(set(steps))  # each step on the record once


def test_a_pass_killed_right_after_each_store_delete_certifies_what_an_uninterrupted_one_does(
    team, make_ready_version, run_on_worker, django_capture_on_commit_callbacks, monkeypatch
):
    from controlplane.audit.models import AuditEvent
    from controlplane.storage import object_store

    capture = django_capture_on_commit_callbacks
    expected = _baseline(team, make_ready_version, run_on_worker, capture)
    request = _erasure_ready_to_advance(
        team.project, team, make_ready_version, run_on_worker, capture
    )
    store = type(object_store())
    delete_all_versions, killed_after = store.delete_all_versions, []

    def deletes_then_dies(self, key):
        # The store has deleted every version of the key; the pass dies before it can
        # say so (a dataset object, a completion record, an archive object).
        deleted = delete_all_versions(self, key)
        if deleted and key not in killed_after:
            killed_after.append(key)
            raise Killed(key)
        return deleted

    monkeypatch.setattr(store, "delete_all_versions", deletes_then_dies)
    outcome, passes = _advance_until_completed(request)

    assert outcome == "completed" and passes == len(killed_after) + 1
    prefix = f"projects/{team.project.pk}/"
    assert any(k.startswith(prefix + "datasets/") for k in killed_after), killed_after
    assert any(k.startswith("system/jobs/") for k in killed_after), killed_after
    assert any(k.startswith(prefix + "inference/") for k in killed_after), killed_after
    request.refresh_from_db()
    assert _account(request.certificate) == expected
    # Each archive object and each scrubbed job audited once, however often the pass died.
    events = AuditEvent.objects.filter(project_id=team.project.pk, payload__request=request.pk)
    assert events.filter(action="subject_request.archive_erased").count() == 1
    assert events.filter(action="job.result_scrubbed").count() == 1
