"""Rows for the serving pages' tests, built straight in the ORM (the way the serving
services and the node sync leave them), so the pages are tested apart from the services.

Plain functions, not fixtures: test_serving_pages.py and test_playground.py both use them.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from django.utils import timezone

_ids = itertools.count(1)


def make_version(team, *, project=None, model_name="gpt", task="text-generation", datasets=()):
    """A ready version of `model_name` (made if missing), from a succeeded pretrain job."""
    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelVersion, RegisteredModel

    project = project or team.project
    model, _ = RegisteredModel.objects.get_or_create(
        project=project, name=model_name, defaults={"task": task, "created_by": team.engineer}
    )
    job = Job.objects.create(
        project=project, kind="pretrain", state="succeeded", created_by=team.engineer
    )
    model.last_version_number += 1
    model.save(update_fields=["last_version_number"])
    version = ModelVersion.objects.create(
        model=model,
        number=model.last_version_number,
        state="ready",
        source_job=job,
        source_attempt=1,
        created_by=team.engineer,
        ready_at=timezone.now(),
    )
    version.lineage_jobs.add(job)
    version.dataset_versions.add(*datasets)
    return version


def make_dataset_version(team, slug="plays"):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name=slug.title(), slug=slug, kind="text"
    )
    return DatasetVersion.objects.create(
        dataset=dataset, number=1, state="ready", created_by=team.engineer
    )


def make_deployment(team, version, *, name="chat", alias="", state="running", **fields):
    """A deployment of `version` (pinned) or of `alias` (followed, targeting `version`)."""
    from controlplane.serving.models import Deployment

    return Deployment.objects.create(
        project=version.model.project,
        name=name,
        model=version.model,
        pinned_version=None if alias else version,
        alias=alias,
        target_version=version,
        state=state,
        created_by=team.engineer,
        **fields,
    )


def make_node(name="node-a", url="http://127.0.0.1:1", *, seen_seconds_ago: float = 0):
    from controlplane.serving.models import ServeNode

    return ServeNode.objects.create(
        name=name, url=url, last_seen=timezone.now() - timedelta(seconds=seen_seconds_ago)
    )


def make_replica(deployment, node, *, state="ready", version=None, **fields):
    from controlplane.serving.models import Replica

    now = timezone.now()
    return Replica.objects.create(
        deployment=deployment,
        version=version or deployment.target_version,
        node=node,
        state=state,
        ready_at=now if state in ("ready", "draining") else None,
        ended_at=now if state in ("stopped", "failed", "lost") else None,
        **fields,
    )


def make_records(deployment, rows: list[dict], *, now=None):
    """InferenceRecords of `deployment`, all in one ArchiveObject. Each row: status,
    seconds_ago, latency_ms, completion_tokens, prompt_tokens, user_id, token_id, endpoint."""
    from controlplane.serving.models import ArchiveObject, InferenceRecord

    now = now or timezone.now()
    n = next(_ids)
    archive = ArchiveObject.objects.create(
        object_key=f"projects/{deployment.project_id}/inference/{deployment.pk}/{n}.jsonl.gz",
        project=deployment.project,
        deployment=deployment,
        replica_id="r" * 32,
        window_start=now - timedelta(hours=2),
        window_end=now,
        size=100 * len(rows),
        records=len(rows),
    )
    records = []
    for index, row in enumerate(rows):
        records.append(
            InferenceRecord.objects.create(
                request_id=row.get("request_id") or f"{n:08x}{index:024x}",
                project=deployment.project,
                deployment=deployment,
                version=deployment.target_version,
                archive_object=archive,
                offset=index * 100,
                length=100,
                created_at=now - timedelta(seconds=row.get("seconds_ago", 0)),
                endpoint=row.get("endpoint", "completions"),
                status=row.get("status", "ok"),
                token_id=row.get("token_id"),
                user_id=row.get("user_id"),
                prompt_tokens=row.get("prompt_tokens", 3),
                completion_tokens=row.get("completion_tokens", 10),
                latency_ms=row.get("latency_ms", 100.0),
            )
        )
    return records
