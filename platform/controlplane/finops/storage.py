"""Daily storage snapshots: bytes and objects per project and kind, from the database's
manifests (never by listing the bucket, which costs a request per thousand objects).

- raw: files of ready dataset versions that were uploaded (no producing job);
- derived: files of ready versions a job produced (pipeline outputs, erasure rewrites);
- checkpoints: the checkpoints jobs reported (JobArtifact, kind checkpoint);
- models: files of registry model versions that hold their copies (not refused/deleted);
- archive: the serving archive's window objects.

An erased version's objects were deleted: it counts 0 (only `ready` versions count).
One GROUP BY query per kind for every project; the day's rows are upserted, so running
it again the same day replaces that day's figures. Each row's cost is a day's share of a
GB-month at the organisation's rate card in force at the end of that day (or now, today).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db import transaction
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from controlplane.datasets.models import DatasetFile
from controlplane.datasets.models import VersionState as DatasetState
from controlplane.finops.models import StorageKind, StorageSnapshot
from controlplane.finops.rates import rate_card_in_force, storage_day_cost
from controlplane.jobs.models import ArtifactKind, JobArtifact
from controlplane.projects.models import Project
from controlplane.registry.models import ModelFile
from controlplane.registry.models import VersionState as ModelState
from controlplane.serving.models import ArchiveObject

SNAPSHOT_TASK = "control.finops_storage_snapshot"


def _by_project(queryset: QuerySet, project_field: str) -> dict[int, tuple[int, int]]:
    rows = queryset.values(project_field).annotate(total=Sum("size"), objects=Count("pk"))
    return {row[project_field]: (int(row["total"] or 0), row["objects"]) for row in rows}


def storage_by_kind() -> dict[str, dict[int, tuple[int, int]]]:
    """{kind: {project_id: (bytes, objects)}}, now: five queries, whatever the size."""
    ready_files = DatasetFile.objects.filter(version__state=DatasetState.READY)
    dataset_project = "version__dataset__project_id"
    return {
        StorageKind.RAW: _by_project(
            ready_files.filter(version__produced_by__isnull=True), dataset_project
        ),
        StorageKind.DERIVED: _by_project(
            ready_files.filter(version__produced_by__isnull=False), dataset_project
        ),
        StorageKind.CHECKPOINTS: _by_project(
            JobArtifact.objects.filter(kind=ArtifactKind.CHECKPOINT), "job__project_id"
        ),
        StorageKind.MODELS: _by_project(
            ModelFile.objects.exclude(version__state__in=[ModelState.REFUSED, ModelState.DELETED]),
            "version__model__project_id",
        ),
        StorageKind.ARCHIVE: _by_project(ArchiveObject.objects.all(), "project_id"),
    }


def _priced_at(day: dt.date, now: dt.datetime) -> dt.datetime:
    end_of_day = dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC)
    return min(end_of_day, now)


def storage_snapshot(*, day: dt.date | None = None, projects: Iterable[int] | None = None) -> int:
    """Write (or replace) `day`'s snapshot of every project. Returns the rows written."""
    now = timezone.now()
    day = day or now.date()
    at = _priced_at(day, now)
    figures = storage_by_kind()
    org_of = dict(Project.objects.values_list("pk", "organisation_id"))
    if projects is not None:
        wanted = set(projects)
        org_of = {pk: org for pk, org in org_of.items() if pk in wanted}
    cards = {org: rate_card_in_force(org, at) for org in set(org_of.values())}
    rows = []
    for project_id, org_id in org_of.items():
        card = cards[org_id]
        for kind in StorageKind.values:
            size, objects = figures[kind].get(project_id, (0, 0))
            rows.append(
                StorageSnapshot(
                    project_id=project_id,
                    day=day,
                    kind=kind,
                    bytes=size,
                    object_count=objects,
                    rate_card=card,
                    cost=storage_day_cost(card.rates, kind, size, day) if card else 0,
                )
            )
    with transaction.atomic():
        StorageSnapshot.objects.bulk_create(
            rows,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["project", "day", "kind"],
            update_fields=["bytes", "object_count", "rate_card", "cost"],
        )
    return len(rows)
