"""The violation scan: what already exists that the policy in force would refuse now.

Tightening a policy must not grandfather what exists. `scan_request` makes a PolicyScan
row (shown like a job) and asks the control worker; `scan_run` (the control task
`control.policy_scan`, and the nightly beat over every project) then, per project:

- builds the facts in bulk (facts.py: a fixed number of queries whatever the count) of
  every ready dataset version, ready model version, running deployment and queued or
  running job;
- asks decide() what the gates would say today: a dataset version as when it became
  ready (rules 1, 3) and, when a training job read it, as a training job's only data
  (rules 2, 4); a model version as if each of its aliases were moved to it now (rules 4,
  5), and, when rule 4 requires retraining, each version at an alias or deployed as one
  that may stay there; a deployment as when it was created (rules 4, 5, 6); a job as when it was created
  (rules 3, 7; its data is judged as a dataset version above);
- applies the project's active waivers (one query), opens or refreshes a Violation per
  (rule, subject) still refused and resolves those no longer found;
- audits `policy_scan.finished` with the counts.

Why the control queue and not a cpu job: the workers hold no database credentials, and
the scan reads nothing but the database.

A scan that crashes is marked failed with the error, never left running; one whose
worker died (a hard time limit, a lost machine) is marked failed by the next scan.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.policies.decide import Finding, PolicySnapshot, decide, protected_aliases
from controlplane.policies.errors import NotAllowed
from controlplane.policies.facts import active_waivers, dataset_facts, model_version_facts
from controlplane.policies.models import PolicyScan, ScanState, SubjectType
from controlplane.policies.plans import dataset_version_ids, gpu_count, training_kinds
from controlplane.policies.rules import Gate, RuleKey
from controlplane.policies.selectors import policy_in_force
from controlplane.policies.subjects import (
    AliasMove,
    DatasetFacts,
    DeploymentPlan,
    JobPlan,
    SubjectRef,
)
from controlplane.policies.violations import record_findings, resolve_cleared
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of

logger = logging.getLogger(__name__)

SCAN_TASK = "control.policy_scan"
NIGHTLY_TASK = "control.policy_scan_nightly"
# The task's limits (tasks.py): the soft one raises inside the scan, which marks it failed;
# the hard one kills the process, and the next scan marks the orphan failed.
SOFT_TIME_LIMIT_SECONDS = 1800
HARD_TIME_LIMIT_SECONDS = SOFT_TIME_LIMIT_SECONDS + 60
# A queued scan whose message was lost (broker outage) is given up after this long.
QUEUED_TIMEOUT = timedelta(hours=6)

TRAINING_RULES = (RuleKey.DATA_PREPARATION, RuleKey.PENDING_ERASURE)
JOB_RULES = (RuleKey.RESIDENCY, RuleKey.COMPUTE)


def can_scan(actor, project) -> bool:
    """Owners and compliance officers scan their project; staff any project, or all."""
    if not getattr(actor, "is_authenticated", False):
        return False
    if actor.is_staff:
        return True
    return project is not None and role_allows(role_of(actor, project), Action.REVIEW)


def scan_request(*, project, actor) -> PolicyScan:
    """Queue a scan of `project` (None: every project, staff only); the control worker
    runs it once this transaction commits."""
    if not can_scan(actor, project):
        who = "staff" if project is None else "the owner or compliance role"
        raise NotAllowed(f"starting a policy scan needs {who}")
    return _scan_create(project=project, actor=actor, send=True)


def _scan_create(*, project, actor, send: bool) -> PolicyScan:
    from controlplane.audit.services import audit_append

    with transaction.atomic():
        scan = PolicyScan.objects.create(project=project, requested_by=actor)
        audit_append(
            project=project,
            actor=actor,
            action="policy_scan.requested",
            artifact=scan,
            payload={"scan": scan.pk, "scope": "project" if project else "every project"},
        )
        if send:
            transaction.on_commit(partial(_send, scan.pk), robust=True)
    return scan


def _send(scan_id: int) -> None:
    from controlplane.celery_app import app
    from workers.protocol import CONTROL_QUEUE

    try:
        # retry=False: a broker outage must not hold the request; the scan stays queued
        # (and is given up after QUEUED_TIMEOUT, the nightly scan covers it meanwhile).
        app.send_task(SCAN_TASK, args=[scan_id], queue=CONTROL_QUEUE, retry=False)
    except Exception as error:  # noqa: BLE001 - any broker failure
        logger.warning("policy scan %s not sent: %s", scan_id, error)


def scan_nightly() -> PolicyScan | None:
    """The beat's scan of every project, run here and now (it is already on the worker)."""
    scan = _scan_create(project=None, actor=None, send=False)
    return scan_run(scan.pk)


def scan_run(scan_id: int) -> PolicyScan | None:
    """Run a queued scan; None when another delivery of the message got it first."""
    _fail_orphans()
    claimed = PolicyScan.objects.filter(pk=scan_id, state=ScanState.QUEUED).update(
        state=ScanState.RUNNING, started_at=timezone.now()
    )
    if claimed != 1:
        return None
    scan = PolicyScan.objects.select_related("project").get(pk=scan_id)
    clock = time.perf_counter()
    totals: Counter[str] = Counter()
    try:
        for project in _projects(scan):
            totals.update(scan_project(project, scan=scan))
    except Exception as error:  # noqa: BLE001 - whatever broke, the row must say so
        logger.exception("policy scan %s failed", scan_id)
        _finish(scan, ScanState.FAILED, totals, clock, error=f"{type(error).__name__}: {error}")
    else:
        _finish(scan, ScanState.SUCCEEDED, totals, clock)
    return scan


def _projects(scan: PolicyScan) -> Iterable:
    from controlplane.projects.models import Project

    if scan.project_id is not None:
        return [scan.project]
    return list(Project.objects.order_by("pk"))


def _finish(scan: PolicyScan, state: str, totals: Counter, clock: float, error: str = "") -> None:
    scan.state = state
    scan.finished_at = timezone.now()
    scan.counts = {**totals, "seconds": round(time.perf_counter() - clock, 3)}
    scan.error = error[:4000]
    scan.save(update_fields=["state", "finished_at", "counts", "error"])


def _fail_orphans() -> None:
    """Scans whose worker died (running past the hard limit) or whose message was lost."""
    now = timezone.now()
    PolicyScan.objects.filter(
        state=ScanState.RUNNING,
        started_at__lt=now - timedelta(seconds=HARD_TIME_LIMIT_SECONDS + 60),
    ).update(
        state=ScanState.FAILED,
        finished_at=now,
        error="the worker running this scan stopped (time limit or crash); start another",
    )
    PolicyScan.objects.filter(state=ScanState.QUEUED, created_at__lt=now - QUEUED_TIMEOUT).update(
        state=ScanState.FAILED,
        finished_at=now,
        error="no control worker took this scan (its message was lost); start another",
    )


# -- one project ---------------------------------------------------------------------------


def only(policy: PolicySnapshot, *keys: RuleKey) -> PolicySnapshot:
    """The policy with every rule but `keys` switched off (a gate asks more rules than one
    part of the scan should: a dataset version's training check is not about compute)."""
    rules = {
        key: params if key in keys else {**params, "enabled": False}
        for key, params in policy.rules.items()
    }
    return replace(policy, rules=rules)


def scan_project(project, *, scan: PolicyScan | None = None) -> dict[str, int]:
    """Scan one project now; its counts. Facts are read outside any transaction; the
    violations are written, and the scan audited, in one."""
    from controlplane.audit.services import audit_append

    started_at = timezone.now()
    policy = policy_in_force(project)
    subjects = _subjects(project)
    findings = _findings(policy, subjects)
    keys = {(f.rule.value, f.subject.type.value, f.subject.id) for f in findings}
    waivers = active_waivers(keys, project_ids=[project.pk])
    refused = [
        f for f in findings if (f.rule.value, f.subject.type.value, f.subject.id) not in waivers
    ]
    still_open = {(f.rule.value, f.subject.type.value, f.subject.id) for f in refused}
    with transaction.atomic():
        recorded = record_findings(project=project, findings=refused, policy_label=policy.label)
        resolved = resolve_cleared(
            project=project,
            still_open=still_open,
            scanned=None,  # everything: a violation whose subject left the scan is over too
            seen_before=started_at,
            waived=waivers,
        )
        counts = {
            "dataset_versions": len(subjects.dataset_versions),
            "model_versions": len(subjects.model_versions),
            "deployments": len(subjects.deployments),
            "jobs": len(subjects.jobs),
            "opened": recorded.opened,
            "still_open": len(still_open),
            "resolved": resolved,
            "waived": len(keys) - len(still_open),
        }
        audit_append(
            project=project,
            actor=None,
            action="policy_scan.finished",
            artifact=scan if scan is not None else ("project", project.pk),
            payload={
                "scan": scan.pk if scan is not None else None,
                "policy": policy.label,
                "policy_version_id": policy.version_id,
                "counts": counts,
                "by_rule": dict(Counter(key[0] for key in still_open)),
            },
        )
    return counts


@dataclass
class _Subjects:
    """Ids and plain rows of what a project has that a policy can refuse."""

    dataset_versions: list[int] = field(default_factory=list)  # ready ones
    trained_on: set[int] = field(default_factory=set)  # dataset versions a training job read
    model_versions: list[int] = field(default_factory=list)  # ready ones
    aliases: list[tuple[int, str]] = field(default_factory=list)  # (model version id, alias)
    deployments: list[dict[str, Any]] = field(default_factory=list)  # running ones
    retention_days: int = 0  # the project's inference archive's
    jobs: list[dict[str, Any]] = field(default_factory=list)  # queued or running


def _subjects(project) -> _Subjects:
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.models import VersionState as DataState
    from controlplane.jobs.models import Job, JobState
    from controlplane.registry.models import ModelAlias, ModelVersion
    from controlplane.registry.models import VersionState as ModelState
    from controlplane.serving.models import (
        DEFAULT_RETENTION_DAYS,
        Deployment,
        DeploymentState,
        ServingSettings,
    )

    found = _Subjects()
    found.dataset_versions = list(
        DatasetVersion.objects.filter(dataset__project=project, state=DataState.READY)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for params in Job.objects.filter(project=project, kind__in=training_kinds()).values_list(
        "params", flat=True
    ):
        found.trained_on.update(dataset_version_ids(params))
    found.model_versions = list(
        ModelVersion.objects.filter(model__project=project, state=ModelState.READY)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    found.aliases = list(
        ModelAlias.objects.filter(model__project=project, version__state=ModelState.READY)
        .order_by("pk")
        .values_list("version_id", "name")
    )
    found.deployments = list(
        Deployment.objects.filter(project=project, state=DeploymentState.RUNNING)
        .order_by("pk")
        .values("pk", "name", "archive_requests", "guardrails", "target_version_id")
    )
    settings_row = ServingSettings.objects.filter(project=project).values("retention_days").first()
    found.retention_days = (
        settings_row["retention_days"] if settings_row else DEFAULT_RETENTION_DAYS
    )
    found.jobs = list(
        Job.objects.filter(project=project, state__in=[JobState.QUEUED, JobState.RUNNING])
        .order_by("pk")
        .values("pk", "kind", "queue", "params")
    )
    return found


def _findings(policy: PolicySnapshot, subjects: _Subjects) -> list[Finding]:
    """What the gates would refuse today, before waivers."""
    findings: list[Finding] = []

    def ask(snapshot: PolicySnapshot, gate: Gate, subject: Any) -> None:
        findings.extend(decide(snapshot, gate, subject).denials)

    def enabled(*keys: RuleKey) -> bool:
        return any(policy.enabled(key) for key in keys)

    # Dataset versions: as when they became ready; those trained on, as a job's data.
    if enabled(RuleKey.LICENCES, RuleKey.RESIDENCY, *TRAINING_RULES):
        training = only(policy, *TRAINING_RULES)
        judged = subjects.dataset_versions
        if not enabled(RuleKey.LICENCES, RuleKey.RESIDENCY):  # only the training checks
            judged = [pk for pk in judged if pk in subjects.trained_on]
        for pk, data in dataset_facts(judged).items():
            ask(policy, Gate.DATASET_READY, data)
            if pk in subjects.trained_on:
                ask(training, Gate.JOB_CREATE, _training_plan(data))
    # Model versions (their aliases) and deployments (what they serve).
    aliased = enabled(RuleKey.PENDING_ERASURE, RuleKey.PROMOTION)
    deployed = enabled(RuleKey.PENDING_ERASURE, RuleKey.PROMOTION, RuleKey.SERVING)
    wanted = {pk for pk, _ in subjects.aliases} if aliased else set()
    if deployed:
        wanted |= {row["target_version_id"] for row in subjects.deployments}
    erasure = policy.enabled(RuleKey.PENDING_ERASURE)
    with_data = erasure is not None  # only rule 4 reads it
    versions = model_version_facts(wanted, with_data=with_data)
    protected = protected_aliases(policy)
    if aliased:
        for version_id, alias in subjects.aliases:
            if version_id in versions:
                move = AliasMove(versions[version_id], alias, protected=alias in protected)
                ask(policy, Gate.ALIAS_MOVE, move)
    if erasure and erasure["trained_on_erased"] == "require_retraining":
        # A flagged version may not stay where it serves from: at any alias, or deployed.
        serving = {pk for pk, _ in subjects.aliases}
        serving |= {row["target_version_id"] for row in subjects.deployments}
        retraining = only(policy, RuleKey.PENDING_ERASURE)
        for version_id in sorted(serving & versions.keys()):
            ask(retraining, Gate.ALIAS_MOVE, versions[version_id])
    if deployed:
        for row in subjects.deployments:
            if row["target_version_id"] in versions:
                ask(
                    policy,
                    Gate.DEPLOYMENT_CREATE,
                    _deployment_plan(row, subjects.retention_days, versions),
                )
    # Active jobs: where their outputs go and what they run on.
    if subjects.jobs and enabled(*JOB_RULES):
        location = _store_location() if policy.enabled(RuleKey.RESIDENCY) else None
        compute = only(policy, *JOB_RULES)
        for row in subjects.jobs:
            ask(compute, Gate.JOB_CREATE, _job_plan(row, location))
    # One subject asked twice (an alias move and "may it stay") finds a hold twice.
    unique = {(f.rule, f.subject.type, f.subject.id, f.reason): f for f in findings}
    return list(unique.values())


def _training_plan(data: DatasetFacts) -> JobPlan:
    """A training job whose only data is `data`: rules 2 and 4 then judge the version."""
    return JobPlan(
        ref=data.ref,
        kind="training",
        queue="",
        gpus=0,
        trains=True,
        datasets=[data],
        output_bucket=data.bucket,
        output_region=data.region,
    )


def _deployment_plan(row: dict, retention_days: int, versions: dict) -> DeploymentPlan:
    from workers.serve.protocol import GuardrailConfig

    return DeploymentPlan(
        ref=SubjectRef(SubjectType.DEPLOYMENT, row["pk"], f"deployment {row['name']}"),
        archive=row["archive_requests"],
        input_pii=GuardrailConfig.from_dict(row["guardrails"]).pii,
        retention_days=retention_days,
        version=versions[row["target_version_id"]],
    )


def _job_plan(row: dict, location) -> JobPlan:
    """A queued or running job as its creation gate saw it (plans.job_plan, without the
    data: that is judged with the dataset versions)."""
    return JobPlan(
        ref=SubjectRef(SubjectType.JOB, row["pk"], f"job {row['pk']} ({row['kind']})"),
        kind=row["kind"],
        queue=row["queue"],
        gpus=gpu_count(row["queue"], row["params"]),
        trains=row["kind"] in training_kinds(),
        datasets=[],
        output_bucket=location.bucket if location else "",
        output_region=location.region if location else "",
    )


def _store_location():
    """Where the platform's store writes (job outputs go there): asked once per project."""
    from controlplane.storage import object_store

    return object_store().location()
