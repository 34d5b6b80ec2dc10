"""The demo's GDPR walk: a small customer-support dataset with a subject field; bob files
an erasure for one customer, dora (compliance) approves it, the erasure job rewrites the
data without them, deletes the old objects with every stored version, scans the project
for residue, and the request completes with its deletion certificate."""

from __future__ import annotations

import hashlib
import io
import json
import random
import time
from typing import TYPE_CHECKING

from django.urls import reverse

from controlplane.datasets.models import Dataset, DatasetKind
from controlplane.datasets.services import (
    DeclaredFile,
    dataset_create,
    dataset_version_complete,
    dataset_version_start,
)
from controlplane.demo.figures import human_size
from controlplane.gdpr.models import RequestState
from controlplane.gdpr.services import request_approve, request_file
from controlplane.storage import object_store

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.projects.models import Project

CUSTOMER = "C-1007"
EMAIL = "ann.lindqvist@example.org"
TOPICS = ("invoice", "password reset", "delivery", "refund", "login", "upgrade")


def support_tickets(count: int = 240, customers: int = 24, seed: int = 7) -> bytes:
    """Deterministic support tickets as JSONL; the demo's customer writes every 24th."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        number = 1000 + i % customers
        customer = f"C-{number}"
        email = EMAIL if customer == CUSTOMER else f"customer{number}@example.org"
        topic = rng.choice(TOPICS)
        text = (
            f"Hello, this is {email}. I have a question about my {topic}: it has not worked "
            f"since ticket {rng.randint(10000, 99999)}. Please help."
        )
        lines.append(json.dumps({"customer_id": customer, "topic": topic, "text": text}))
    return ("\n".join(lines) + "\n").encode()


def _support_dataset(project: Project, user: User) -> Dataset:
    dataset = Dataset.objects.filter(project=project, slug="support-tickets").first()
    if dataset is not None:
        return dataset
    return dataset_create(
        project=project,
        actor=user,
        name="Support tickets",
        slug="support-tickets",
        kind=DatasetKind.TEXT,
        source="helpdesk:export-2026-11",
        license="LicenseRef-Internal",
        subject_field="customer_id",
    )


def _upload(project: Project, user: User, data: bytes):
    dataset = _support_dataset(project, user)
    declared = [DeclaredFile("tickets.jsonl", len(data), hashlib.sha256(data).hexdigest())]
    version, uploads = dataset_version_start(
        dataset=dataset, actor=user, files=declared, note="helpdesk export"
    )
    parts = {}
    for upload in uploads:
        etag = object_store().upload_part(
            upload.file.object_key, upload.file.upload_id, 1, io.BytesIO(data), len(data)
        )
        parts[upload.file.pk] = [(1, etag)]
    return dataset_version_complete(version=version, actor=user, parts=parts)


def erasure_walk(command, project: Project, users: dict[str, User]) -> None:
    command.step(
        "GDPR: bob files an erasure for one customer, dora approves, the data is rewritten"
    )
    data = support_tickets()
    version = _upload(project, users["bob"], data)
    tickets = data.count(b"\n")
    command.stdout.write(
        f"    {version.dataset.slug} v{version.number}: {tickets} tickets "
        "with a subject field (customer_id)"
    )
    request = request_file(
        project=project,
        actor=users["bob"],
        kind="erasure",
        identifiers=[
            {"type": "customer_id", "value": CUSTOMER},
            {"type": "email", "value": EMAIL},
        ],
        legal_basis="Art. 17(1)(b): consent withdrawn by e-mail to the support desk",
    )
    request = request_approve(request=request, actor=users["dora"], reason="identity verified")
    deadline = time.monotonic() + command.timeout
    while time.monotonic() < deadline:
        request.refresh_from_db()
        if request.state in (RequestState.COMPLETED, RequestState.FAILED):
            break
        time.sleep(0.5)
    if request.state != RequestState.COMPLETED:
        raise RuntimeError(
            f"erasure request {request.pk} ended {request.state}: {request.failure_reason}"
        )
    certificate = request.certificate
    for found in certificate["found"]:
        if found.get("records"):
            command.stdout.write(f"    found {found['records']} records in {found['label']}")
    for rewritten in certificate["rewritten"]:
        command.stdout.write(
            f"    {rewritten['old_label']} -> {rewritten['new_label']} without them; "
            f"{rewritten['old_label']} erased"
        )
    deleted = sum(len(d["object_versions"]) for d in certificate["deleted"])
    scan = certificate["residue_scan"]
    command.stdout.write(
        f"    deleted {len(certificate['deleted'])} objects ({deleted} stored versions); "
        f"residue scan: {scan['hit_count']} hits in {scan['object_versions_read']} object "
        f"versions ({human_size(scan['bytes_stored'])}), clean: {scan['clean']}"
    )
    command.stdout.write(
        f"    request {request.pk} completed; certificate at "
        f"/projects/{project.pk}/subject-requests/{request.pk}/"
    )
    command.look_at(
        "GDPR: the erasure certificate", reverse("gdpr-request", args=[project.pk, request.pk])
    )
