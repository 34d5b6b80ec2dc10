"""A small, hand-made organisation for the overview's tests: two projects with known usage,
storage and budgets, and another organisation whose figures must never show."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

# A fixed moment: the 11th of a 30-day month, 00:00 UTC (10 days elapsed).
NOW = dt.datetime(2026, 11, 11, tzinfo=dt.UTC)
MONTH = dt.date(2026, 11, 1)


@pytest.fixture
def make_usage(db):
    from controlplane.finops.models import JobAttemptUsage
    from controlplane.jobs.models import Job

    def make(project, *, kind="train", cost="1", started_at=None, state="succeeded", **fields):
        started_at = started_at or dt.datetime.now(dt.UTC).replace(day=1, hour=1, minute=0)
        job = fields.pop("job", None) or Job.objects.create(
            project=project,
            kind=kind,
            queue="gpu" if fields.get("gpu_seconds") else "cpu",
            state=state,
            created_by=project.created_by,
            started_at=started_at,
        )
        return JobAttemptUsage.objects.create(
            job=job,
            attempt=fields.pop("attempt", 1),
            project=project,
            kind=job.kind,
            queue=job.queue,
            started_at=started_at,
            updated_at=started_at,
            cost=Decimal(cost),
            **fields,
        )

    return make


@pytest.fixture
def org_world(make_user):
    """`acme` (admin `boss` who owns both projects, admin `cfo` in no project, compliance officer `auditor`, engineer `dev` in `vision` only)
    with projects `vision` and `speech`; `globex` with `rival`, whose figures never show."""
    from controlplane.orgs.models import OrgMembership, OrgRole
    from controlplane.orgs.services import ensure_org_member, org_create
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add, project_create

    class World:
        pass

    w = World()
    w.boss = make_user("boss")
    w.auditor = make_user("auditor")
    w.dev = make_user("dev")
    w.stranger = make_user("stranger")
    w.org = org_create(name="Acme", slug="acme", actor=w.boss)
    w.vision = project_create(name="Vision", slug="vision", actor=w.boss, organisation=w.org)
    w.speech = project_create(name="Speech", slug="speech", actor=w.boss, organisation=w.org)
    member_add(project=w.vision, user=w.dev, role=Role.ENGINEER, actor=w.boss)
    member_add(project=w.vision, user=w.auditor, role=Role.COMPLIANCE, actor=w.boss)
    ensure_org_member(w.org, w.auditor, actor=w.boss)
    # An org admin in no project: sees every project's figures all the same.
    w.cfo = make_user("cfo")
    OrgMembership.objects.create(organisation=w.org, user=w.cfo, role=OrgRole.ADMIN)
    w.other_org = org_create(name="Globex", slug="globex", actor=w.stranger)
    w.rival = project_create(name="Rival", slug="rival", actor=w.stranger, organisation=w.other_org)
    return w


def deployment_of(project):
    """A running deployment "chat" of a ready model "m" v1 in the project."""
    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelVersion, RegisteredModel
    from controlplane.serving.models import Deployment

    model = RegisteredModel.objects.create(
        project=project, name="m", task="text-generation", created_by=project.created_by
    )
    job = Job.objects.create(
        project=project, kind="train", state="succeeded", created_by=project.created_by
    )
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        state="ready",
        source_job=job,
        source_attempt=1,
        created_by=project.created_by,
    )
    return Deployment.objects.create(
        project=project,
        name="chat",
        model=model,
        target_version=version,
        pinned_version=version,
        created_by=project.created_by,
    )
