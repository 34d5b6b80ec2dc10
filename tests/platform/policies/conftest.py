"""Fixtures of the policy tests: a project's policy set through the real service, datasets
and their versions (uploaded for real, or derived by a data-pipeline job whose result is
applied as the control worker applies it), and a base model for post-training jobs.

Nothing here trains: jobs are only created, which is where the gates are.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

PAIRS = b'{"prompt": "Who is there?", "response": "Nay, answer me."}\n'
CLEAN = {"toxic_share": 0.0, "pii_per_1k_records": 0.0}


@pytest.fixture
def set_policy(team):
    """`set_policy(licences={"enabled": True, ...}, ...)`: a new version of the project's
    policy, edited by its compliance officer."""
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    def set_(project=None, *, actor=None, **rules):
        project = project or team.project
        return policy_update(
            project=project,
            actor=actor or team.compliance,
            changes=rules,
            reason="tests",
            base_version=current_number(project),
        )

    return set_


@pytest.fixture
def make_dataset(team):
    from controlplane.datasets.services import dataset_create

    def make(
        slug: str = "plays", *, licence: str = "MIT", source: str = "https://example.org/plays"
    ):
        return dataset_create(
            project=team.project,
            actor=team.engineer,
            name=slug.title(),
            slug=slug,
            kind="text",
            license=licence,
            source=source,
        )

    return make


@pytest.fixture
def uploaded(team, make_ready_version):
    """`uploaded(dataset)`: a version uploaded part by part (one JSON-lines file of pairs)."""

    def make(dataset):
        return make_ready_version(dataset, team.engineer, {"pairs.jsonl": PAIRS})

    return make


@pytest.fixture
def derived(team):
    """`derived(parent, pii=True, residual=CLEAN)`: the token-shard version a data-pipeline
    job derives from `parent`, made ready the way the platform applies the job's result.
    `pii=False`: the pipeline had no pii stage; `residual=None`: its report predates the
    after-cleaning figures (or there is no report: `report=False`)."""
    from controlplane.datasets.services import dataset_version_from_job
    from controlplane.jobs.models import Job

    def make(parent, *, pii: bool = True, residual: dict | None = CLEAN, report: bool = True):
        stages = ["normalize", {"pii": {}}] if pii else ["normalize"]
        job = Job.objects.create(
            project=team.project,
            kind="data_pipeline",
            state="running",
            params={"dataset_version_id": parent.pk, "pipeline": {"stages": stages}},
            created_by=team.engineer,
        )
        shard = b"\x00\x01" * 64
        result = {
            "records": 2,
            "report": ({"records": 2, "residual": residual} if residual else {"records": 2})
            if report
            else None,
            "files": [
                {
                    "name": "tokens/train-00000.bin",
                    "key": f"{job.output_prefix}attempt-1/tokens/train-00000.bin",
                    "size": len(shard),
                    "sha256": hashlib.sha256(shard).hexdigest(),
                }
            ],
        }
        return dataset_version_from_job(job=job, result=result)

    return make


@pytest.fixture
def base_job(team):
    """A succeeded job that published a model (its files are only listed: nothing reads
    them until a worker would run the post-training job)."""
    from controlplane.jobs.models import Job, JobArtifact
    from controlplane.jobs.posttrain import MODEL_FILES

    job = Job.objects.create(
        project=team.project, kind="pretrain", state="succeeded", params={}, created_by=team.owner
    )
    for name in MODEL_FILES:
        JobArtifact.objects.create(
            job=job,
            name=name,
            object_key=f"{job.output_prefix}attempt-1/{name}",
            sha256="0" * 64,
            size=1,
        )
    return job


@pytest.fixture
def pretrain(team, settings):
    """`pretrain(version)`: create a pre-training job on a token-shard version."""
    from controlplane.jobs.services import job_create

    settings.TRAINING_QUEUE = "cpu"

    def create(version, *, actor=None, **params):
        return job_create(
            project=team.project,
            kind="pretrain",
            params={"dataset_version_id": version.pk, **params},
            actor=actor or team.engineer,
        )

    return create


@pytest.fixture
def waive(team):
    """`waive(rule, subject_type, subject_id, days=7)`: a waiver row (negative days: expired)."""
    from django.utils import timezone

    from controlplane.policies.models import Waiver

    def make(rule: str, subject_type: str, subject_id: int, *, days: float = 7):
        return Waiver.objects.create(
            project=team.project,
            rule=rule,
            subject_type=subject_type,
            subject_id=subject_id,
            subject_label=f"{subject_type} {subject_id}",
            reason="tests",
            expires_at=timezone.now() + timedelta(days=days),
            granted_by=team.compliance,
        )

    return make


@pytest.fixture
def decisions(team):
    """`decisions(action, artifact)`: the policy decision events on an artifact's timeline."""
    from controlplane.audit.selectors import audit_events_for

    def events(action: str, artifact):
        kind, pk = (
            artifact if isinstance(artifact, tuple) else (artifact._meta.model_name, artifact.pk)
        )
        return list(
            audit_events_for(team.project, artifact_type=kind, artifact_id=str(pk), action=action)
        )

    return events
