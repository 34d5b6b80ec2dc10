"""The demo's compliance walk: dora (compliance officer) sets a policy that requires PII
redaction before training; bob's pre-training on data tokenized without it is refused
with the rule and the fix; he trains on the cleaned version instead (the allowed decision
is on the job's timeline); at the end the project's audit chain is exported and checked
offline by the verifier, which needs nothing but the file."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from controlplane.audit.export import audit_export
from controlplane.demo.figures import human_size
from controlplane.jobs.services import job_create
from controlplane.policies.errors import InvalidPolicy, PolicyDenied
from controlplane.policies.models import PolicyScan, ScanState
from controlplane.policies.scan import scan_request
from controlplane.policies.selectors import current_number, violations_of
from controlplane.policies.services import policy_update
from controlplane.policies.waivers import waiver_grant
from workers.protocol import JobKind

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.datasets.models import DatasetVersion
    from controlplane.projects.models import Project

DEMO_POLICY = {
    "licences": {
        "enabled": True,
        "allowed_licences": [
            "LicenseRef-PublicDomain",
            "LicenseRef-Internal",
            "CC0-1.0",
            "CC-BY-4.0",
            "MIT",
        ],
        "allowed_sources": ["Project Gutenberg*", "helpdesk:*"],
    },
    "data_preparation": {
        "enabled": True,
        "require_pii_redaction": True,
        "max_toxic_share": 0.01,
        "max_pii_per_1k": 1.0,
    },
    "promotion": {
        "enabled": True,
        "aliases": ["production"],
        "require_evaluation": True,
        "require_compliance_approval": True,
    },
    "serving": {
        "enabled": True,
        "require_archive": True,
        "require_input_pii_redaction": True,
        "retention_min_days": 7,
    },
    "compute": {"enabled": True, "allowed_queues": ["cpu", "gpu"], "max_gpus_per_job": 1},
}
# A quick tokenization pass with no PII stage: what an impatient engineer might train on.
NO_PII_PIPELINE = {"stages": ["normalize", "exact_dedup"]}


def policy_set(command, project: Project, users: dict[str, User]) -> None:
    command.step(
        "Compliance policy: dora requires licensed sources, PII redaction before training, "
        "evaluated and approved promotions, archived and redacted serving"
    )
    # The residency rule is what the end of the walk tightens; a walk run again starts
    # from the demo policy (a new version) rather than from the tightened one.
    changes = {**DEMO_POLICY, "residency": {"enabled": False}}
    try:
        version = policy_update(
            project=project,
            actor=users["dora"],
            changes=changes,
            reason="EU AI Act readiness: no personal data in training sets",
            base_version=current_number(project),
        )
    except InvalidPolicy:  # nothing to change: a walk run before left it so
        command.stdout.write(f"    the project's policy v{current_number(project)} is in force")
        return
    rules = ", ".join(key for key, values in version.rules.items() if values["enabled"])
    command.stdout.write(f"    project policy v{version.number}: {rules} on")


def refused_training(
    command, project: Project, user: User, raw: DatasetVersion, steps: int
) -> None:
    """Tokenize the raw upload without the PII stage, try to pre-train on it: refused."""
    command.step("Policy gate: pre-training on data that was never PII-redacted is refused")
    job = job_create(
        project=project,
        kind=JobKind.DATA_PIPELINE,
        actor=user,
        params={"dataset_version_id": raw.pk, "val_fraction": 0.1, "pipeline": NO_PII_PIPELINE},
    )
    job = command.wait_succeeded(job, "data-pipeline (no PII stage)")
    unredacted = job.produced_versions.get()
    params = {"dataset_version_id": unredacted.pk, "preset": "shakespeare-char", "device": "cpu"}
    params["train"] = {"max_iters": steps}
    try:
        job_create(project=project, kind=JobKind.PRETRAIN, actor=user, params=params)
    except PolicyDenied as refusal:
        for denial in refusal.decision.as_dict()["denials"]:
            command.stdout.write(
                f"    409 policy_denied, rule {denial['rule_number']} ({denial['title']}): "
                f"{denial['reason']}"
            )
            command.stdout.write(f"      fix: {denial['fix']}")
        return
    raise RuntimeError("the policy let a job train on data that was never PII-redacted")


def audit_export_verified(command, project: Project, user: User) -> Path:
    command.step("Audit evidence: the chain exported as JSONL and verified offline")
    path = Path(settings.DATA_DIR) / "exports" / f"audit-{project.slug}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for line in audit_export(project, actor=user):
            out.write(line)
    # The verifier runs as an auditor would: a fresh interpreter, no settings, no database.
    platform_dir = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.audit.verify", str(path)],
        cwd=platform_dir,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(platform_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    verdict = (result.stdout or result.stderr).strip().splitlines()
    command.stdout.write(f"    {path} ({human_size(path.stat().st_size)})")
    command.stdout.write(f"    offline verifier: {verdict[0] if verdict else result.returncode}")
    if result.returncode != 0:
        raise RuntimeError(f"the offline verifier rejected the export: {verdict}")
    return path


def _scan(command, project: Project, user: User) -> PolicyScan:
    scan = scan_request(project=project, actor=user)
    deadline = time.monotonic() + command.timeout
    while time.monotonic() < deadline:
        scan.refresh_from_db()
        if scan.state in (ScanState.SUCCEEDED, ScanState.FAILED):
            break
        time.sleep(0.25)
    if scan.state != ScanState.SUCCEEDED:
        raise RuntimeError(f"policy scan {scan.pk} ended {scan.state}: {scan.error}")
    return scan


def violations_and_waiver(
    command, project: Project, users: dict[str, User], cleaned: DatasetVersion
) -> None:
    """dora tightens the policy (EU storage only); a scan lists what no longer complies;
    she waives the training data until its move, and the next scan counts it waived."""
    command.step("Violations: dora requires EU storage; a scan lists what no longer complies")
    dora = users["dora"]
    version = policy_update(
        project=project,
        actor=dora,
        changes={"residency": {"enabled": True, "allowed_regions": ["eu-west-1"]}},
        reason="data residency: EU only from next quarter",
        base_version=current_number(project),
    )
    scan = _scan(command, project, dora)
    counts = scan.counts
    command.stdout.write(
        f"    policy v{version.number}; scan {scan.pk} in {counts['seconds']:.2f} s: "
        f"{counts['dataset_versions']} dataset versions, {counts['model_versions']} model "
        f"versions, {counts['deployments']} deployments -> {counts['still_open']} open violations"
    )
    for violation in violations_of(project)[:3]:
        command.stdout.write(f"      {violation.rule}: {violation.reason}")
    waiver = waiver_grant(
        project=project,
        actor=dora,
        rule="residency",
        subject_type="dataset_version",
        subject_id=cleaned.pk,
        reason="the training data moves to the EU bucket with the storage migration",
        expires_at=timezone.now() + timedelta(days=30),
    )
    scan = _scan(command, project, dora)
    command.stdout.write(
        f"    waiver {waiver.pk} for {waiver.subject_label} (30 days); the next scan: "
        f"{scan.counts['still_open']} open, {scan.counts['waived']} waived "
        f"(/projects/{project.slug}/compliance/)"
    )
    command.look_at(
        "compliance: the policy, the open violations, the waiver",
        reverse("project_compliance", args=[project.slug]),
    )
