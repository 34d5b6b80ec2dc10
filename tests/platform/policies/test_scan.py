"""The violation scan: a tightened policy opens violations for what already exists; a
second scan refreshes them; relaxing the policy or a waiver resolves them; a crash marks
the scan failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.platform.policies.compliance_fixtures import (
    alias,
    dataset_version,
    deployment,
    model_version,
    open_violations,
    run_scan,
    set_policy,
    training_job,
    waiver,
)

pytestmark = pytest.mark.django_db

MIT_ONLY = {"licences": {"enabled": True, "allowed_licences": ["MIT"]}}


def test_a_tightened_policy_opens_a_violation_per_refused_subject(team):
    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    mit = dataset_version(team.project, team.owner, licence="MIT")
    version = model_version(team.project, team.owner)
    unarchived = deployment(team.project, team.owner, version, archive=False)
    deployment(team.project, team.owner, version, archive=True)
    set_policy(
        team.project,
        team.compliance,
        {**MIT_ONLY, "serving": {"enabled": True, "require_archive": True}},
    )

    scan = run_scan(team.project, team.compliance)

    assert scan.state == "succeeded" and scan.started_at and scan.finished_at
    assert open_violations(team.project) == {
        ("licences", "dataset_version", gpl.pk),
        ("serving", "deployment", unarchived.pk),
    }
    assert mit.pk != gpl.pk
    counts = scan.counts
    assert counts["dataset_versions"] == 2 and counts["deployments"] == 2
    assert counts["opened"] == 2 and counts["still_open"] == 2 and counts["resolved"] == 0
    assert counts["seconds"] >= 0
    from controlplane.policies.models import Violation

    row = Violation.objects.get(subject_id=gpl.pk, rule="licences")
    assert "GPL-3.0-only" in row.reason and row.fix and row.policy_version == "project v1"


def test_a_second_scan_refreshes_instead_of_duplicating(team):
    from controlplane.policies.models import Violation

    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    run_scan(team.project, team.compliance)
    first = Violation.objects.get(subject_id=gpl.pk)
    set_policy(
        team.project, team.compliance, {"licences": {"allowed_licences": ["MIT", "Apache-2.0"]}}
    )

    scan = run_scan(team.project, team.compliance)

    again = Violation.objects.get(subject_id=gpl.pk)
    assert again.pk == first.pk and again.state == "open"
    assert again.policy_version == "project v2" and again.last_seen_at > first.last_seen_at
    assert "Apache-2.0" in again.fix  # the text follows the policy it was found under
    assert scan.counts["opened"] == 0 and scan.counts["still_open"] == 1


def test_relaxing_the_policy_resolves_violations_automatically(team):
    from controlplane.policies.models import Violation

    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    run_scan(team.project, team.compliance)
    set_policy(team.project, team.compliance, {"licences": {"enabled": False}}, "relax")

    scan = run_scan(team.project, team.compliance)

    row = Violation.objects.get(subject_id=gpl.pk)
    assert row.state == "resolved" and row.resolved_by is None and "no longer" in row.resolution
    assert scan.counts["resolved"] == 1 and open_violations(team.project) == set()
    from controlplane.audit.models import AuditEvent

    cleared = AuditEvent.objects.get(project_id=team.project.pk, action="violation.cleared")
    assert cleared.payload["count"] == 1


def test_an_active_waiver_lets_the_subject_pass_and_an_expired_one_does_not(team):
    waived = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    expired = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    waiver(team.project, team.compliance, "dataset_version", waived.pk, "licences")
    old = waiver(team.project, team.compliance, "dataset_version", expired.pk, "licences")
    type(old).objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    set_policy(team.project, team.compliance, MIT_ONLY)

    scan = run_scan(team.project, team.compliance)

    assert open_violations(team.project) == {("licences", "dataset_version", expired.pk)}
    assert scan.counts["waived"] == 1


def test_a_waiver_granted_later_resolves_the_open_violation_naming_it(team):
    from controlplane.policies.models import Violation

    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    run_scan(team.project, team.compliance)
    granted = waiver(team.project, team.compliance, "dataset_version", gpl.pk, "licences")

    run_scan(team.project, team.compliance)

    row = Violation.objects.get(subject_id=gpl.pk)
    assert row.state == "resolved" and f"waiver {granted.pk}" in row.resolution


def test_training_data_and_protected_aliases_are_judged_as_their_gates_would(team):
    from controlplane.policies.waivers import hold_place

    raw = dataset_version(team.project, team.owner)  # trained on, never cleaned
    unused = dataset_version(team.project, team.owner)  # never trained on: no rule 2
    training_job(team.project, team.owner, raw)
    hold_place(
        project=team.project, actor=team.compliance, dataset_version_id=raw.pk, reference="ER-1"
    )
    unevaluated = model_version(team.project, team.owner, datasets=[raw])
    passing = model_version(team.project, team.owner, metrics={"val_loss": 1.0})
    alias(unevaluated, "production", team.owner)
    alias(passing, "staging", team.owner)
    set_policy(
        team.project,
        team.compliance,
        {
            "data_preparation": {"enabled": True},
            "pending_erasure": {"enabled": True},
            "promotion": {"enabled": True, "apply_to_deployments": False},
        },
    )

    run_scan(team.project, team.compliance)

    assert open_violations(team.project) == {
        ("data_preparation", "dataset_version", raw.pk),
        ("pending_erasure", "dataset_version", raw.pk),
        ("pending_erasure", "model_version", unevaluated.pk),
        ("promotion", "model_version", unevaluated.pk),
    }
    assert unused.pk not in {key[2] for key in open_violations(team.project)}


def test_active_jobs_are_checked_against_the_compute_rule(team):
    from controlplane.jobs.models import Job

    gpu = Job.objects.create(
        project=team.project, kind="pretrain", queue="gpu", state="running", created_by=team.owner
    )
    Job.objects.create(  # finished: nothing to refuse any more
        project=team.project, kind="pretrain", queue="gpu", state="failed", created_by=team.owner
    )
    set_policy(
        team.project, team.compliance, {"compute": {"enabled": True, "allowed_queues": ["cpu"]}}
    )

    scan = run_scan(team.project, team.compliance)

    assert open_violations(team.project) == {("compute", "job", gpu.pk)}
    assert scan.counts["jobs"] == 1


def test_a_scan_of_one_project_leaves_the_others_alone(team):
    mine = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    theirs = dataset_version(team.other_project, team.outsider, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    set_policy(team.other_project, team.outsider, MIT_ONLY)

    run_scan(team.project, team.compliance)

    assert open_violations(team.project) == {("licences", "dataset_version", mine.pk)}
    assert open_violations(team.other_project) == set()
    run_scan(None, team.admin)  # staff: every project
    assert open_violations(team.other_project) == {("licences", "dataset_version", theirs.pk)}


def test_requests_and_results_are_audited(team):
    from controlplane.audit.models import AuditEvent

    dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)

    scan = run_scan(team.project, team.compliance)

    events = AuditEvent.objects.filter(project_id=team.project.pk, action__startswith="policy_scan")
    requested, finished = events.order_by("seq")
    assert requested.action == "policy_scan.requested" and requested.actor_id == team.compliance.pk
    assert finished.action == "policy_scan.finished"
    assert finished.payload["scan"] == scan.pk and finished.payload["counts"]["opened"] == 1
    assert finished.payload["by_rule"] == {"licences": 1}


def test_only_owners_compliance_officers_and_staff_start_scans(team):
    from controlplane.policies.errors import NotAllowed
    from controlplane.policies.scan import scan_request

    for user in (team.engineer, team.viewer, team.outsider):
        with pytest.raises(NotAllowed):
            scan_request(project=team.project, actor=user)
    with pytest.raises(NotAllowed):
        scan_request(project=None, actor=team.owner)  # every project: staff only
    assert scan_request(project=team.project, actor=team.owner).state == "queued"
    assert scan_request(project=None, actor=team.admin).project is None


def test_the_request_asks_the_control_worker_after_commit(
    team, sent_jobs, django_capture_on_commit_callbacks
):
    from controlplane.policies.scan import SCAN_TASK, scan_request

    with django_capture_on_commit_callbacks(execute=True):
        scan = scan_request(project=team.project, actor=team.owner)

    assert (SCAN_TASK, [scan.pk], "control") in sent_jobs


def test_a_crashing_scan_is_marked_failed_with_the_error(team, monkeypatch):
    from controlplane.policies import scan as scan_module
    from controlplane.policies.scan import scan_request
    from controlplane.policies.tasks import policy_scan

    def broken(policy, subjects):
        raise RuntimeError("facts exploded")

    monkeypatch.setattr(scan_module, "_findings", broken)
    scan = scan_request(project=team.project, actor=team.owner)

    assert policy_scan(scan.pk) == "failed"

    scan.refresh_from_db()
    assert scan.state == "failed" and "facts exploded" in scan.error and scan.finished_at
    assert policy_scan(scan.pk) is None  # delivered again: not run twice


def test_orphaned_scans_are_marked_failed_by_the_next(team):
    from controlplane.policies.models import PolicyScan
    from controlplane.policies.scan import scan_request

    orphan = PolicyScan.objects.create(
        project=team.project, state="running", started_at=timezone.now() - timedelta(hours=2)
    )
    run_scan(team.project, team.owner)
    orphan.refresh_from_db()
    assert orphan.state == "failed" and "stopped" in orphan.error
    assert scan_request  # the module's entry point stays importable for the task


def test_the_nightly_beat_scans_every_project(team):
    from django.conf import settings

    from controlplane.celery_app import app
    from controlplane.policies.models import PolicyScan
    from controlplane.policies.scan import NIGHTLY_TASK, SCAN_TASK
    from controlplane.policies.tasks import policy_scan_nightly

    entry = settings.CELERY_BEAT_SCHEDULE["policy-scan-nightly"]
    assert entry["task"] == NIGHTLY_TASK and entry["options"]["queue"] == "control"
    app.loader.import_default_modules()
    assert {NIGHTLY_TASK, SCAN_TASK} <= set(app.tasks)
    theirs = dataset_version(team.other_project, team.outsider, licence="GPL-3.0-only")
    set_policy(team.other_project, team.outsider, MIT_ONLY)

    assert policy_scan_nightly() == "succeeded"

    scan = PolicyScan.objects.get()
    assert scan.project is None and scan.requested_by is None
    assert open_violations(team.other_project) == {("licences", "dataset_version", theirs.pk)}


def test_lineage_carries_pipeline_runs_and_holds_from_every_ancestor(team):
    """A version derived from a derived version: the pii run two steps up still counts,
    and a hold on the raw upload reaches it (the recursive lineage in facts.py)."""
    from controlplane.jobs.models import Job
    from controlplane.policies.facts import dataset_facts
    from controlplane.policies.waivers import hold_place

    raw = dataset_version(team.project, team.owner)
    pipeline = Job.objects.create(
        project=team.project,
        kind="data_pipeline",
        state="succeeded",
        params={"pipeline": {"stages": [{"pii": {"types": ["email"]}}]}},
        created_by=team.owner,
    )
    cleaned = dataset_version(team.project, team.owner)
    type(cleaned).objects.filter(pk=cleaned.pk).update(
        produced_by=pipeline, report={"residual": {"toxic_share": 0.0}}
    )
    cleaned.parents.add(raw)
    derived = dataset_version(team.project, team.owner)
    derived.parents.add(cleaned)
    hold_place(
        project=team.project, actor=team.compliance, dataset_version_id=raw.pk, reference="ER-9"
    )

    facts = dataset_facts([derived.pk, cleaned.pk, raw.pk, 10**9])

    assert set(facts) == {derived.pk, cleaned.pk, raw.pk}
    assert [run.pii_types for run in facts[derived.pk].pipelines] == [("email",)]
    assert facts[derived.pk].residual == {"toxic_share": 0.0}
    assert facts[derived.pk].residual_from == f"{cleaned.dataset.slug} v1"
    assert [hold.reference for hold in facts[derived.pk].holds] == ["ER-9"]
    assert facts[raw.pk].pipelines == [] and facts[raw.pk].residual is None


def test_model_versions_are_judged_on_their_latest_evaluation(team):
    from django.utils import timezone

    from controlplane.jobs.models import Job
    from controlplane.policies.facts import model_version_facts
    from controlplane.policies.models import Violation
    from controlplane.registry.models import ModelEvaluation

    data = dataset_version(team.project, team.owner)
    worse = model_version(team.project, team.owner, datasets=[data], metrics={"val_loss": 1.0})
    later = Job.objects.create(
        project=team.project, kind="evaluate", state="succeeded", params={}, created_by=team.owner
    )
    ModelEvaluation.objects.create(
        version=worse, job=later, metrics={"val_loss": 3.0}, finished_at=timezone.now()
    )
    alias(worse, "production", team.owner)
    set_policy(
        team.project,
        team.compliance,
        {
            "promotion": {
                "enabled": True,
                "thresholds": [{"metric": "val_loss", "op": "<=", "value": 2}],
            }
        },
    )

    facts = model_version_facts([worse.pk])[worse.pk]
    assert facts.metrics == {"val_loss": 3.0} and [d.ref.id for d in facts.datasets] == [data.pk]
    assert model_version_facts([worse.pk], with_data=False)[worse.pk].datasets == []
    run_scan(team.project, team.compliance)
    row = Violation.objects.get(subject_type="model_version", subject_id=worse.pk)
    assert row.rule == "promotion" and "val_loss is 3" in row.reason
