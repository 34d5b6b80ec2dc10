"""Retraining a model version flagged "trained on erased data" (ErasedDataFlag).

`retrain_start` starts the job that made the version (its source job: same kind, same
parameters) again, with its `dataset_version_id` replaced by the version the erasure
derived from it: the newest ready descendant made by the flagging request's chain (the
erasure job's rewrite, or the data_pipeline job that rebuilt its token shards). It goes
through job_create, so the policy's gates apply as to any job.

Refused with a Conflict (409) when the version is not flagged, when no rewritten data
exists (the erasure has not finished, or the version's source job read no dataset version
an erasure rewrote), or when its base model was itself trained on erased data: that one
is retrained first.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from controlplane.audit.services import audit_append
from controlplane.gdpr.errors import Conflict
from controlplane.gdpr.models import ErasedDataFlag, SubjectRequest


def _chain_jobs(request: SubjectRequest) -> set[int]:
    """The jobs of an erasure request's chain: the erasure job and its rebuilds."""
    progress = request.progress or {}
    jobs = {progress.get("job_id")}
    jobs |= {r.get("job_id") for r in progress.get("rebuilds", [])}
    return {pk for pk in jobs if pk}


def rewritten_version(version_id: int, requests: list[SubjectRequest]):
    """The newest ready dataset version that `requests`' chains derived from
    `version_id` (a chain of erasures followed to its end), or None."""
    from controlplane.datasets.models import DatasetVersion, VersionState

    current, changed = version_id, True
    while changed:
        changed = False
        for request in requests:
            jobs = _chain_jobs(request)
            found: set[int] = set()
            frontier = [current]
            while frontier:  # children made by the chain (a rewrite of a rewrite too)
                children = DatasetVersion.objects.filter(
                    parents__in=frontier, produced_by_id__in=jobs
                ).exclude(pk__in=found)
                frontier = list(children.values_list("pk", flat=True))
                found.update(frontier)
            # A rebuilt token version descends from the rewritten source, not from the
            # version it replaces: the request's progress says which it stands for.
            for rebuild in (request.progress or {}).get("rebuilds", []):
                if rebuild.get("version") and rebuild.get("for") in {current, *found}:
                    found.add(rebuild["version"])
            newest = (
                DatasetVersion.objects.filter(pk__in=found, state=VersionState.READY)
                .order_by("-pk")
                .first()
            )
            if newest is not None and newest.pk != current:
                current, changed = newest.pk, True
    if current == version_id:
        return None
    return DatasetVersion.objects.select_related("dataset").get(pk=current)


def _base_needs_retraining(source, requests: list[SubjectRequest]) -> bool:
    """Whether the source job's base job (a post-training job's) was itself trained on
    data the requests erased: its registered versions are flagged, or it read an old
    version they rewrote."""
    from controlplane.jobs.models import Job

    base_id = (source.params or {}).get("base_job_id")
    if not base_id:
        return False
    if ErasedDataFlag.objects.filter(model_version__source_job_id=base_id).exists():
        return True
    base = Job.objects.filter(pk=base_id).first()
    read = (base.params or {}).get("dataset_version_id") if base else None
    erased = {
        entry["old"] for request in requests for entry in request.progress.get("versions", [])
    }
    return read in erased


def retrain_start(*, version, actor):
    """Start the retraining job of a flagged model version; the job (409 Conflict when
    it cannot start, PolicyDenied or JobRequestError from job_create)."""
    from controlplane.jobs.kinds import resubmittable_params
    from controlplane.jobs.services import job_create

    label = f"{version.model.name} v{version.number}"
    flags = list(
        ErasedDataFlag.objects.filter(model_version=version)
        .select_related("request")
        .order_by("request_id")
    )
    if not flags:
        raise Conflict(f"{label} is not flagged as trained on erased data; nothing to retrain")
    requests = [flag.request for flag in flags]
    source = version.source_job
    if _base_needs_retraining(source, requests):
        raise Conflict(
            f"{label} was fine-tuned from base job {source.params['base_job_id']}, which was "
            "itself trained on erased data: retrain the base model first, then start this "
            "job on the new base"
        )
    params: dict[str, Any] = resubmittable_params(source.kind, source.params)
    old = params.get("dataset_version_id")
    new = rewritten_version(old, requests) if old else None
    if new is None:
        references = ", ".join(f"#{r.pk}" for r in requests)
        raise Conflict(
            f"no rewritten data exists for {label}: erasure request {references} has not "
            "derived a ready version from the data it was trained on yet"
        )
    job = job_create(
        project=version.model.project,
        kind=source.kind,
        params={**params, "dataset_version_id": new.pk},
        actor=actor,
        experiment=source.experiment,
    )
    with transaction.atomic():
        audit_append(
            project=version.model.project,
            actor=actor,
            action="model_version.retrain_started",
            artifact=version,
            payload={
                "job_id": job.pk,
                "requests": [r.pk for r in requests],
                "source_job_id": source.pk,
                "dataset_version": {"old": old, "new": new.pk},
            },
        )
    return job
