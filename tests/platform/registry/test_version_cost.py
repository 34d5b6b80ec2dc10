"""What a model cost: the priced usage of every job of a version's lineage (the data
pipeline, the pretraining, the fine-tune), each job once, on the pages and in the API."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

pytestmark = pytest.mark.django_db

RATES = {
    "cpu_hour": "0.10",
    "gpu_hour": {"default": "2.00"},
    "storage_gb_month": {k: "0" for k in ("raw", "derived", "checkpoints", "models", "archive")},
    "tokens_million": "1.00",
}


@pytest.fixture
def card(team, make_user):
    from controlplane.finops.services import rate_card_create
    from controlplane.orgs.models import OrgMembership, OrgRole

    admin = make_user("orgadmin")
    org = team.project.organisation
    OrgMembership.objects.create(organisation=org, user=admin, role=OrgRole.ADMIN)
    card = rate_card_create(org=org, actor=admin, rates=RATES)
    card.effective_from = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    card.save(update_fields=["effective_from"])
    return card


@pytest.fixture
def priced(card):
    """`priced(job, "1.25", attempt=1)`: a priced usage row of the job's attempt."""
    from django.utils import timezone

    from controlplane.finops.models import JobAttemptUsage

    def add(job, amount: str, *, attempt: int = 1):
        now = timezone.now()
        return JobAttemptUsage.objects.create(
            job=job,
            attempt=attempt,
            project=job.project,
            kind=job.kind,
            queue="gpu",
            started_at=now,
            updated_at=now,
            final=True,
            gpu_seconds=3600,
            rate_card=card,
            cost=Decimal(amount),
        )

    return add


@pytest.fixture
def lineage(team, plays_version, make_model_job, ready_version, priced):
    """A pipeline run made the plays data (two attempts); a pretrain read it and became
    gpt v1; an SFT of that pretrain became chat v1. An unrelated job also cost money."""
    from controlplane.jobs.models import Job

    pipeline = Job.objects.create(
        project=team.project, kind="pipeline", state="succeeded", created_by=team.engineer
    )
    plays_version.produced_by = pipeline
    plays_version.save(update_fields=["produced_by"])
    pretrain = make_model_job("pretrain", params={"dataset_version_id": plays_version.pk})
    base = ready_version("gpt", job=pretrain)
    sft = make_model_job("sft", params={"base_job_id": pretrain.pk})
    tuned = ready_version("chat", job=sft)
    unrelated = make_model_job("pretrain")
    priced(pipeline, "1.00", attempt=1)
    priced(pipeline, "0.50", attempt=2)  # a resumed pipeline: both attempts count
    priced(pretrain, "3.00")
    priced(sft, "2.00")
    priced(unrelated, "100.00")
    return {"pipeline": pipeline, "pretrain": pretrain, "sft": sft, "base": base, "tuned": tuned}


def _amounts(cost) -> dict[str, str]:
    return {entry["kind"]: entry["amount"] for entry in cost["by_kind"]}


def test_a_fine_tune_costs_its_own_job_its_base_and_the_data_pipeline(team, api, lineage):
    url = f"/api/v1/projects/{team.project.pk}/models/chat/versions/1/"
    response = api(team.viewer).get(url)
    assert response.status_code == 200
    cost = response.json()["cost"]
    assert cost["currency"] == "EUR"
    assert cost["total"] == "6.50"  # 2.00 sft + 3.00 pretrain + 1.50 pipeline, not the 100
    assert cost["jobs"] == 3
    assert _amounts(cost) == {"pretrain": "3.00", "sft": "2.00", "pipeline": "1.50"}
    by_kind = {entry["kind"]: entry["job_ids"] for entry in cost["by_kind"]}
    assert by_kind["pipeline"] == [lineage["pipeline"].pk]


def test_the_base_version_costs_only_its_own_lineage(team, api, lineage):
    response = api(team.engineer).get(f"/api/v1/projects/{team.project.pk}/models/gpt/versions/")
    assert response.status_code == 200
    (version,) = response.json()["results"]
    assert version["cost"]["total"] == "4.50"
    assert _amounts(version["cost"]) == {"pretrain": "3.00", "pipeline": "1.50"}


def test_a_version_whose_jobs_reported_nothing_costs_zero_without_currency(
    team, api, ready_version
):
    ready_version("gpt")
    response = api(team.engineer).get(f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/")
    assert response.json()["cost"] == {"currency": None, "total": "0.00", "jobs": 1, "by_kind": []}


def test_another_projects_user_cannot_read_the_cost(team, api, lineage):
    url = f"/api/v1/projects/{team.project.pk}/models/chat/versions/1/"
    assert api(team.outsider).get(url).status_code == 404


def test_the_version_page_shows_the_cost_with_links_to_the_jobs(team, client, lineage):
    client.force_login(team.viewer)
    html = client.get(f"/projects/{team.project.pk}/models/chat/v1/").content.decode()
    assert '<strong id="cost-total">6.50 EUR</strong>' in html
    for job in (lineage["pipeline"], lineage["pretrain"], lineage["sft"]):
        assert f'href="/projects/{team.project.pk}/jobs/{job.pk}/">job {job.pk}</a>' in html


def test_the_model_page_counts_each_job_of_its_versions_once(
    team, client, lineage, make_model_job, ready_version, priced
):
    # A second fine-tune of the same pretrain: the shared base and data are paid once.
    sft = make_model_job("sft", params={"base_job_id": lineage["pretrain"].pk})
    ready_version("chat", job=sft)
    priced(sft, "4.00")
    client.force_login(team.engineer)
    html = client.get(f"/projects/{team.project.pk}/models/chat/").content.decode()
    assert '<strong id="cost-total">10.50 EUR</strong>' in html  # 2 + 4 + 3 + 1.50
