"""Daily storage snapshots from the manifests: bytes by kind, erased versions at 0, a
re-run replacing the day, and each day priced at the rate card in force that day."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command

from controlplane.finops.models import RateCard, StorageSnapshot
from controlplane.finops.rates import storage_day_cost
from controlplane.finops.storage import storage_snapshot
from tests.platform.finops.conftest import RATES

pytestmark = pytest.mark.django_db


def figures(project, day):
    rows = StorageSnapshot.objects.filter(project=project, day=day)
    return {row.kind: (row.bytes, row.object_count) for row in rows}


@pytest.fixture
def stored(team, make_ready_version):
    """An uploaded version (10 + 5 bytes), a derived one (7), a checkpoint (100), a
    registered model file (40), in the team's project."""
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.models import ArtifactKind, Job, JobArtifact
    from controlplane.registry.models import ModelFile, ModelVersion, RegisteredModel

    dataset = dataset_create(
        project=team.project, actor=team.owner, name="Notes", slug="notes", kind="text"
    )
    raw = make_ready_version(dataset, team.owner, {"a.txt": b"0123456789", "b.txt": b"01234"})
    derived = make_ready_version(dataset, team.owner, {"c.txt": b"0123456"})
    job = Job.objects.create(
        project=team.project, kind="pretrain", state="succeeded", created_by=team.owner
    )
    derived.produced_by = job
    derived.save(update_fields=["produced_by"])
    JobArtifact.objects.create(
        job=job, kind=ArtifactKind.CHECKPOINT, name="c", object_key="ck", sha256="0", size=100
    )
    model = RegisteredModel.objects.create(
        project=team.project, name="gpt", task="text-generation", created_by=team.owner
    )
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        state="ready",
        source_job=job,
        source_attempt=1,
        created_by=team.owner,
    )
    ModelFile.objects.create(
        version=version,
        name="model.safetensors",
        source_key="s",
        object_key="m",
        sha256="0",
        size=40,
    )
    return raw, derived


def test_a_snapshot_counts_bytes_by_kind_and_an_erased_version_counts_zero(team, stored):
    raw, _derived = stored
    day = dt.date(2026, 11, 3)
    storage_snapshot(day=day)
    assert figures(team.project, day) == {
        "raw": (15, 2),
        "derived": (7, 1),
        "checkpoints": (100, 1),
        "models": (40, 1),
        "archive": (0, 0),
    }
    assert figures(team.other_project, day)["raw"] == (0, 0)

    raw.state = "erased"
    raw.save(update_fields=["state"])
    storage_snapshot(day=day)  # the same day again: replaced, not added
    assert figures(team.project, day)["raw"] == (0, 0)
    assert StorageSnapshot.objects.filter(project=team.project, day=day).count() == 5


def test_a_rate_change_mid_month_prices_each_day_at_its_own_card(
    team, stored, rate_card, org_admin
):
    from controlplane.datasets.models import DatasetFile
    from controlplane.finops.services import rate_card_create

    raw, _derived = stored
    DatasetFile.objects.filter(version=raw).update(size=15 * 10**8)  # 3 GB in two files
    dearer = {**RATES, "storage_gb_month": {**RATES["storage_gb_month"], "raw": "60"}}
    second = rate_card_create(org=team.project.organisation, actor=org_admin, rates=dearer)
    RateCard.objects.filter(pk=second.pk).update(
        effective_from=dt.datetime(2026, 11, 16, tzinfo=dt.UTC)
    )
    before, after = dt.date(2026, 11, 15), dt.date(2026, 11, 16)
    storage_snapshot(day=before)
    storage_snapshot(day=after)
    first_day = StorageSnapshot.objects.get(project=team.project, day=before, kind="raw")
    second_day = StorageSnapshot.objects.get(project=team.project, day=after, kind="raw")
    assert first_day.rate_card_id == rate_card.pk and second_day.rate_card_id == second.pk
    # 3 GB at 30 a GB-month over November's 30 days: 3 a day, then 6 at the new rate.
    assert (first_day.cost, second_day.cost) == (Decimal("3.000000"), Decimal("6.000000"))


def test_the_cost_of_a_gigabyte_day_is_a_thirtieth_of_the_rate_in_november(team, rate_card):
    from controlplane.datasets.models import DatasetFile

    assert DatasetFile.objects.count() == 0
    assert storage_day_cost(RATES, "raw", 10**9, dt.date(2026, 11, 1)) == Decimal("1.000000")
    assert storage_day_cost(RATES, "raw", 10**9, dt.date(2026, 2, 1)) == Decimal("1.071429")


def test_the_management_command_snapshots_today(team, stored, capsys):
    call_command("finops_snapshot")
    assert "storage rows written" in capsys.readouterr().out
    assert StorageSnapshot.objects.filter(project=team.project).count() == 5
