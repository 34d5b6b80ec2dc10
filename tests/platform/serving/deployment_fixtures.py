"""Fixtures and a fake serve node for the deployment, scheduler and internal-endpoint tests.

Imported by those test files (`from ...deployment_fixtures import deploy_fixture`: each
fixture's function is named `<fixture>_fixture`, so the import does not shadow the
test's argument) rather than kept in a conftest.py, which other serving tests do not need.

`served_version(model_name="gpt", task=..., datasets=(), jobs=())`: a ready ModelVersion
built in the ORM, with ModelFile rows (the scheduler only names the files).
`pipeline_dataset(params)`: a dataset version made by a data_pipeline job with `params`.
`FakeNode(name, capacity)`: reports its replicas like `python -m workers.serve` does and
follows the answers: a new spec starts (`starting`), a spec no longer in the answer is
gone, a draining one stays `draining` until `finish_draining()`.
"""

from __future__ import annotations

import itertools
import time

import pytest

from workers.serve.protocol import NodeReport, ReplicaStatus, SyncAnswer

_numbers = itertools.count(1)


@pytest.fixture(name="served_version")
def served_version_fixture(team):
    from django.utils import timezone

    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelFile, ModelVersion, RegisteredModel

    def make(
        model_name="gpt",
        *,
        project=None,
        task="text-generation",
        datasets=(),
        jobs=(),
        state="ready",
    ):
        project = project or team.project
        model, _ = RegisteredModel.objects.get_or_create(
            project=project, name=model_name, defaults={"task": task, "created_by": team.engineer}
        )
        job = Job.objects.create(
            project=project,
            kind="pretrain" if task == "text-generation" else "diffusion",
            state="succeeded",
            params={},
            created_by=team.engineer,
        )
        model.last_version_number += 1
        model.save(update_fields=["last_version_number"])
        version = ModelVersion.objects.create(
            model=model,
            number=model.last_version_number,
            state=state,
            source_job=job,
            source_attempt=1,
            created_by=team.engineer,
            ready_at=timezone.now() if state == "ready" else None,
        )
        version.lineage_jobs.add(job, *jobs)
        version.dataset_versions.add(*datasets)
        names = (
            {"model.safetensors": "weights", "config.json": "config", "tokenizer.json": "tokenizer"}
            if task == "text-generation"
            else {"checkpoint.pt": "checkpoint"}
        )
        for name, role in names.items():
            ModelFile.objects.create(
                version=version,
                name=name,
                role=role,
                source_key=f"{job.output_prefix}attempt-1/model/{name}",
                object_key=f"{version.object_prefix}{name}",
                sha256="ab" * 32,
                size=123,
                verified_at=timezone.now(),
            )
        return version

    return make


@pytest.fixture(name="pipeline_dataset")
def pipeline_dataset_fixture(team):
    """`pipeline_dataset(params)` -> a dataset version produced by a data_pipeline job."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.models import Job

    def make(params: dict, *, slug: str | None = None):
        slug = slug or f"data{next(_numbers)}"
        dataset = dataset_create(
            project=team.project, actor=team.engineer, name=slug.title(), slug=slug, kind="text"
        )
        job = Job.objects.create(
            project=team.project,
            kind="data_pipeline",
            state="succeeded",
            params=params,
            created_by=team.engineer,
        )
        return DatasetVersion.objects.create(
            dataset=dataset,
            number=1,
            state="ready",
            produced_by=job,
            created_by=team.engineer,
        )

    return make


@pytest.fixture(name="deploy")
def deploy_fixture(team, served_version):
    """`deploy(name="chat", version=None, **settings)`: a running deployment (of a new
    ready version of `gpt` unless one is given)."""
    from controlplane.serving.services import deployment_create

    def make(name="chat", *, version=None, alias=None, actor=None, **settings):
        if version is None and alias is None:
            version = served_version()
        model = version.model if version is not None else settings.pop("model")
        return deployment_create(
            project=team.project,
            actor=actor or team.engineer,
            name=name,
            model=model,
            version=version,
            alias=alias,
            **settings,
        )

    return make


@pytest.fixture(name="audit_actions")
def audit_actions_fixture():
    """`audit_actions(project, prefix)` -> the project's audit actions, oldest first."""
    from controlplane.audit.models import AuditEvent

    def actions(project, prefix: str = "deployment."):
        return list(
            AuditEvent.objects.filter(project_id=project.pk, action__startswith=prefix)
            .order_by("seq")
            .values_list("action", flat=True)
        )

    return actions


class FakeNode:
    """A serve node's side of the sync, without processes."""

    def __init__(self, name: str, *, capacity: int = 4, device: str = "cpu"):
        self.name = name
        self.url = f"http://{name}:8100"
        self.capacity = capacity
        self.device = device
        self.started_at = time.time()
        self.running: dict[str, ReplicaStatus] = {}
        self.answer: SyncAnswer | None = None

    def report(self) -> NodeReport:
        return NodeReport(
            node=self.name,
            url=self.url,
            device=self.device,
            capacity=self.capacity,
            replicas=list(self.running.values()),
            started_at=self.started_at,
        )

    def sync(self) -> SyncAnswer:
        from controlplane.serving.scheduler import node_sync

        self.answer = node_sync(self.report())
        self.follow(self.answer)
        return self.answer

    def follow(self, answer: SyncAnswer) -> None:
        wanted = {spec.replica_id: spec for spec in answer.replicas}
        for replica_id in list(self.running):
            if replica_id not in wanted:
                del self.running[replica_id]  # not ours any more: stopped
        for replica_id, spec in wanted.items():
            status = self.running.get(replica_id)
            if status is None:
                status = self.running[replica_id] = ReplicaStatus(replica_id, "starting", pid=1)
            if spec.draining:
                status.state = "draining"

    def ready(self, *replica_ids: str) -> None:
        for replica_id, status in self.running.items():
            if status.state == "starting" and (not replica_ids or replica_id in replica_ids):
                status.state = "ready"

    def fail(self, replica_id: str, error: str = "out of memory") -> None:
        self.running[replica_id].state = "failed"
        self.running[replica_id].error = error

    def finish_draining(self) -> None:
        for replica_id, status in list(self.running.items()):
            if status.state == "draining":
                del self.running[replica_id]

    def restart(self) -> None:
        self.running.clear()
        self.started_at += 100.0


def replicas_of(deployment, *states: str):
    from controlplane.serving.models import Replica

    found = Replica.objects.filter(deployment=deployment).select_related("version", "node")
    if states:
        found = found.filter(state__in=states)
    return list(found.order_by("created_at", "id"))
