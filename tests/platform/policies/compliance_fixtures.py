"""Helpers for the scan, waiver and compliance-API tests: subjects built in the ORM (no
upload, no worker), and a policy set through the real service.

Imported by those test files rather than kept in a conftest.py (other policy tests have
their own); every helper takes the `team` fixture's objects explicitly.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from django.utils import timezone

_numbers = itertools.count(1)


def set_policy(project, actor, changes: dict, reason: str = "tighten"):
    """A new version of the project's policy with `changes` ({rule: {param: value}})."""
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    return policy_update(
        project=project,
        actor=actor,
        changes=changes,
        reason=reason,
        base_version=current_number(project),
    )


def dataset_version(
    project,
    user,
    *,
    licence: str = "MIT",
    source: str = "",
    bucket: str = "platform",
    region: str = "local",
    state: str = "ready",
):
    """A ready version of a new dataset with the given licence, source and location."""
    from controlplane.datasets.models import Dataset, DatasetVersion

    n = next(_numbers)
    dataset = Dataset.objects.create(
        project=project,
        name=f"Data {n}",
        slug=f"data-{n}",
        kind="text",
        license=licence,
        source=source,
        created_by=user,
        last_version_number=1,
    )
    return DatasetVersion.objects.create(
        dataset=dataset,
        number=1,
        state=state,
        created_by=user,
        storage_bucket=bucket,
        storage_region=region,
        ready_at=timezone.now() if state == "ready" else None,
    )


def training_job(project, user, version, *, state: str = "succeeded", kind: str = "pretrain"):
    """A job that trained on `version` (as job_create records it in its params)."""
    from controlplane.jobs.models import Job

    return Job.objects.create(
        project=project,
        kind=kind,
        state=state,
        params={"dataset_version_id": version.pk},
        created_by=user,
    )


def model_version(project, user, *, name: str = "gpt", datasets=(), metrics=None):
    """A ready model version (of model `name`), trained on `datasets`; with `metrics`, a
    finished evaluation reporting them."""
    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelEvaluation, ModelVersion, RegisteredModel

    model, _ = RegisteredModel.objects.get_or_create(
        project=project, name=name, defaults={"task": "text-generation", "created_by": user}
    )
    job = Job.objects.create(
        project=project, kind="pretrain", state="succeeded", params={}, created_by=user
    )
    model.last_version_number += 1
    model.save(update_fields=["last_version_number"])
    version = ModelVersion.objects.create(
        model=model,
        number=model.last_version_number,
        state="ready",
        source_job=job,
        source_attempt=1,
        created_by=user,
        ready_at=timezone.now(),
    )
    version.dataset_versions.add(*datasets)
    if metrics is not None:
        evaluation_job = Job.objects.create(
            project=project, kind="evaluate", state="succeeded", params={}, created_by=user
        )
        ModelEvaluation.objects.create(
            version=version, job=evaluation_job, metrics=metrics, finished_at=timezone.now()
        )
    return version


def alias(version, name: str, user):
    from controlplane.registry.models import ModelAlias

    return ModelAlias.objects.create(
        model=version.model, name=name, version=version, moved_by=user, moved_at=timezone.now()
    )


def deployment(project, user, version, *, archive: bool = True, name: str | None = None):
    """A running deployment pinned to `version`."""
    from controlplane.serving.models import Deployment

    return Deployment.objects.create(
        project=project,
        name=name or f"dep-{next(_numbers)}",
        model=version.model,
        pinned_version=version,
        target_version=version,
        archive_requests=archive,
        created_by=user,
    )


def waiver(project, officer, subject_type: str, subject_id: int, rule: str, *, days: float = 30):
    from controlplane.policies.waivers import waiver_grant

    return waiver_grant(
        project=project,
        actor=officer,
        rule=rule,
        subject_type=subject_type,
        subject_id=subject_id,
        reason="accepted risk for the tests",
        expires_at=timezone.now() + timedelta(days=days),
    )


def run_scan(project, actor):
    """Request a scan and run it as the control worker would; the scan row afterwards."""
    from controlplane.policies.scan import scan_request, scan_run

    scan = scan_request(project=project, actor=actor)
    scan_run(scan.pk)
    scan.refresh_from_db()
    return scan


def open_violations(project) -> set[tuple[str, str, int]]:
    from controlplane.policies.models import Violation

    return set(
        Violation.objects.filter(project=project, state="open").values_list(
            "rule", "subject_type", "subject_id"
        )
    )
