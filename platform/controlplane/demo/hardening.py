"""The demo's operations walk: what keeps the platform honest when clients and servers fail.

- a client that repeats a POST after a timeout (same Idempotency-Key) gets the first
  answer back and creates one job, not two;
- every worker event of every job was applied exactly once, with no gap and nothing
  parked as a dead letter;
- the audit chains' heads are anchored (signed) in the object store, so a database
  superuser who truncates or rewrites a chain is caught by `audit_verify`;
- the readiness probe checks the database, broker, object store and cache one by one.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.core.management.base import CommandError
from django.db.models import F, Sum
from rest_framework.test import APIClient

from controlplane.accounts.services import api_token_create
from controlplane.audit.anchors import audit_anchor_chains
from controlplane.health import readiness_report
from controlplane.jobs.models import DeadLetterEvent, Job, JobEventStream, JobState

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.projects.models import Project


def safe_retry(command, project: Project, user: User, upload_id: int) -> None:
    command.step("Safe retries: a job POST repeated with its Idempotency-Key creates one job")
    _token, raw = api_token_create(user=user, name="demo retries")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
    url = f"/api/v1/projects/{project.pk}/jobs/"
    body = {"kind": "inspect", "params": {"upload_id": upload_id}}
    before = Job.objects.filter(project=project).count()
    first = client.post(url, body, format="json")
    again = client.post(url, body, format="json")
    created = Job.objects.filter(project=project).count() - before
    if first.status_code != 201 or again.json()["id"] != first.json()["id"] or created != 1:
        raise CommandError(f"a repeated POST was not idempotent: {first.json()} / {again.json()}")
    command.stdout.write(
        f"    job {first.json()['id']} created once; the retry got the same answer "
        f"(Idempotent-Replayed: {again.headers.get('Idempotent-Replayed')})"
    )
    job = command.wait_for(Job.objects.get(pk=first.json()["id"]), {JobState.SUCCEEDED})
    command.stdout.write(f"    job {job.pk}: {job.state}")


def event_path_health(command, project: Project) -> None:
    command.step("Event path: every worker event applied once, no gap, nothing parked")
    streams = JobEventStream.objects.filter(job__project=project)
    applied = streams.aggregate(total=Sum("applied_count"))["total"] or 0
    with_gap = streams.filter(applied_count__lt=F("max_seq") + 1).count()
    parked = DeadLetterEvent.objects.filter(job__project=project, resolved_at=None).count()
    command.stdout.write(
        f"    {applied} events of {streams.count()} job attempts applied; "
        f"attempts with a gap: {with_gap}; dead letters: {parked}"
    )
    if with_gap or parked:
        raise CommandError("the event path lost or parked events; see the job pages")


def anchors_and_readiness(command) -> None:
    command.step("Audit anchors in the object store, and the readiness probe")
    anchors = audit_anchor_chains()
    for anchor in anchors:
        command.stdout.write(
            f"    anchored {anchor.chain.scope} at event {anchor.length}: {anchor.object_key}"
        )
    report, ready = readiness_report()
    checks = ", ".join(
        f"{name} {'ok' if check['ok'] else 'FAILING'}"
        + (f" ({check['latency_ms']:.0f} ms)" if "latency_ms" in check else "")
        for name, check in report["checks"].items()
    )
    command.stdout.write(f"    /readyz: {report['status']}: {checks}")
    if not ready:
        raise CommandError("the platform is not ready: its database does not answer")
