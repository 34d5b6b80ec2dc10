"""Subjects for the data and job gates, built from what the caller is about to do: a
version about to be uploaded, a job about to be created or resumed.

The facts of existing dataset versions come from facts.py; this module only adds what
does not exist yet (the new version's label, the job's plan) and where the platform's
object store keeps what it writes (`location()`, the store's bucket and region).
"""

from __future__ import annotations

from typing import Any

from controlplane.policies.facts import dataset_facts
from controlplane.policies.models import SubjectType
from controlplane.policies.subjects import DatasetFacts, JobPlan, SubjectRef


def _store_location():
    from controlplane.storage import object_store

    return object_store().location()


def upload_facts(dataset) -> DatasetFacts:
    """The version `dataset_version_start` is about to make: the dataset's licence and
    source, stored where the platform's store writes."""
    location = _store_location()
    return DatasetFacts(
        ref=SubjectRef(SubjectType.DATASET_VERSION, None, f"{dataset.slug} (new version)"),
        licence=dataset.license,
        source=dataset.source,
        bucket=location.bucket,
        region=location.region,
    )


def training_kinds() -> frozenset[str]:
    """Kinds that train a model on a dataset (rules 1, 2 and 4 look at their data)."""
    from controlplane.jobs.posttrain import POSTTRAIN_KINDS

    return frozenset({"pretrain", *(str(kind) for kind in POSTTRAIN_KINDS)})


def dataset_version_ids(params: dict[str, Any]) -> list[int]:
    """The dataset versions a job reads: every `*dataset_version_id` (an id) and
    `*dataset_version_ids` (a list of ids) among its parameters."""
    ids: list[int] = []
    for key, value in (params or {}).items():
        if key.endswith("dataset_version_id"):
            values = [value]
        elif key.endswith("dataset_version_ids") and isinstance(value, list):
            values = value
        else:
            continue
        ids += [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return list(dict.fromkeys(ids))


def _whole(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def gpu_count(queue: str, params: dict[str, Any]) -> int:
    """GPUs a job asks for: none on the cpu queue (its devices are CPU processes); on the
    gpu queue resources.devices x resources.nodes when the job says, else one."""
    if str(queue) != "gpu":
        return 0
    resources = (params or {}).get("resources")
    if isinstance(resources, dict):
        devices = _whole(resources.get("devices"))
        nodes = _whole(resources.get("nodes", 1))
        if devices is not None and nodes is not None:
            return max(devices, 1) * max(nodes, 1)
    return 1


def job_plan(*, kind: str, queue: str, params: dict[str, Any], job=None) -> JobPlan:
    """The plan of a job about to be created (`job` None) or resumed (`job`: the job, so
    that a waiver granted on it applies)."""
    trains = str(kind) in training_kinds()
    data = dataset_facts(dataset_version_ids(params)) if trains else {}
    location = _store_location()
    ref = (
        SubjectRef(SubjectType.JOB, job.pk, f"job {job.pk} ({job.kind})")
        if job is not None
        else SubjectRef(SubjectType.JOB, None, f"new {kind} job")
    )
    return JobPlan(
        ref=ref,
        kind=str(kind),
        queue=str(queue),
        gpus=gpu_count(queue, params),
        trains=trains,
        datasets=[data[pk] for pk in dataset_version_ids(params) if pk in data],
        output_bucket=location.bucket,
        output_region=location.region,
    )
