"""Helpers of the inference-archive tests: a deployment, and records archived for it by
the real replica-side Archiver, then indexed as the control worker would."""

from __future__ import annotations

import time
import uuid

from workers.serve.archive import Archiver, ListIndexSink
from workers.serve.protocol import ReplicaSpec, to_dict

BASE_TIME = 1_790_000_000.0  # 2026-09-21


def make_deployment(project, user, name: str = "chat"):
    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelVersion, RegisteredModel
    from controlplane.serving.models import Deployment

    model, _ = RegisteredModel.objects.get_or_create(
        project=project, name="gpt", defaults={"task": "text-generation", "created_by": user}
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
    )
    return Deployment.objects.create(
        project=project,
        name=name,
        model=model,
        pinned_version=version,
        target_version=version,
        created_by=user,
    )


def spec_of(deployment) -> ReplicaSpec:
    from controlplane.serving.subjects import project_subject_key

    version = deployment.target_version
    return ReplicaSpec(
        replica_id=uuid.uuid4().hex,
        deployment_id=deployment.pk,
        deployment=f"{deployment.project.slug}/{deployment.name}",
        project_id=deployment.project_id,
        model=deployment.model.name,
        version=version.number,
        version_id=version.pk,
        task="text-generation",
        files=[],
        subject_key=project_subject_key(deployment.project),
    )


def record(n: int, **fields) -> dict:
    values = {
        "id": uuid.uuid4().hex,
        "time": BASE_TIME + n,
        "endpoint": "chat.completions",
        "status": "ok",
        "stream": False,
        "caller": {"token_id": 3, "user_id": 4, "username": "ann"},
        "subject": None,
        "request": {"messages": [{"role": "user", "content": f"question {n}"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {n}"}}]},
        "error": None,
        "guardrails": {
            "input": {"pii": {"EMAIL": 1}, "pii_action": "redacted", "toxicity": 0.0},
            "output": {"pii": {}, "pii_action": "none", "toxicity": 0.0},
        },
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
        "timings": {"queue_ms": 1.0, "prefill_ms": 2.0, "decode_ms": 9.0, "total_ms": 12.0},
    }
    values.update(fields)
    return values


def archive(deployment, records: list[dict], *, store=None, ingest: bool = True, **options):
    """Archive `records` as one replica of `deployment` would; returns the index payloads
    (already ingested unless ingest=False)."""
    from controlplane.serving.archive import ingest_index
    from controlplane.storage import object_store

    sink = ListIndexSink()
    archiver = Archiver(
        store or object_store(), spec_of(deployment), sink, node="node-1", **options
    )
    for item in records:
        archiver.record(item)
    assert archiver.close(timeout=10)
    payloads = [to_dict(index) for index in sink.indexes]
    if ingest:
        for payload in payloads:
            ingest_index(payload)
    return payloads


def now() -> float:
    return time.time()
