"""GET /api/v1/orgs/<slug>/usage and /cost: the overview's figures as JSON, scoped like
the page; a non-member gets 404."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from controlplane.finops.models import Budget

pytestmark = pytest.mark.django_db


@pytest.fixture
def spent(org_world, make_usage):
    w = org_world
    make_usage(w.vision, kind="train", cost="12.34", gpu_seconds=7200, gpu_util_mean=50.0)
    make_usage(w.speech, kind="evaluate", cost="5.66", cpu_seconds=3600)
    make_usage(w.rival, kind="train", cost="777.77")
    this_month = timezone.now().date().replace(day=1)
    Budget.objects.create(project=w.vision, month=this_month, amount=Decimal("100"))
    return w


def test_cost_by_project_matches_the_page(spent, api, client):
    body = api(spent.cfo).get("/api/v1/orgs/acme/cost/").json()

    assert body["organisation"] == "acme" and body["group_by"] == "project"
    assert body["total"] == "18.00" and body["currency"] == "EUR"
    assert [(r["project"], r["total"], r["budget"]) for r in body["rows"]] == [
        ("speech", "5.66", None),
        ("vision", "12.34", "100.00"),
    ]
    client.force_login(spent.cfo)
    assert "18.00" in client.get("/").content.decode()


def test_cost_by_kind_and_by_day(spent, api):
    client = api(spent.boss)
    kinds = client.get("/api/v1/orgs/acme/cost/?group_by=kind").json()["rows"]
    days = client.get("/api/v1/orgs/acme/cost/?group_by=day").json()["rows"]

    assert [(r["kind"], r["cost"]) for r in kinds] == [("evaluate", "5.66"), ("train", "12.34")]
    assert [r["cost"] for r in days] == ["18.00"]


def test_usage_by_project_and_kind(spent, api):
    client = api(spent.boss)
    body = client.get("/api/v1/orgs/acme/usage/").json()
    by_kind = client.get("/api/v1/orgs/acme/usage/?group_by=kind").json()["rows"]

    assert body["totals"]["gpu_hours"] == 2.0 and body["totals"]["cpu_hours"] == 1.0
    rows = {r["project"]: r for r in body["rows"]}
    assert rows["vision"]["gpu_util_mean"] == 50.0 and rows["speech"]["cpu_hours"] == 1.0
    assert [r["kind"] for r in by_kind] == ["evaluate", "train"]
    assert {s["project"] for s in body["storage"]} == {"vision", "speech"}


def test_a_member_sees_only_their_projects(spent, api):
    body = api(spent.dev).get("/api/v1/orgs/acme/cost/").json()
    usage = api(spent.dev).get("/api/v1/orgs/acme/usage/").json()

    assert body["total"] == "12.34" and body["projects"] == ["vision"]
    assert [row["project"] for row in usage["rows"]] == ["vision"]
    assert usage["storage"] == []  # not on an engineer's overview either


def test_another_organisation_answers_404(spent, api):
    for path in ("/api/v1/orgs/acme/cost/", "/api/v1/orgs/acme/usage/", "/api/v1/orgs/nope/cost/"):
        response = api(spent.stranger).get(path)
        assert response.status_code == 404, path
        assert "777" not in response.content.decode()


def test_bad_parameters_are_400_naming_the_field(spent, api):
    client = api(spent.boss)
    month = client.get("/api/v1/orgs/acme/cost/?month=2026-13")
    group = client.get("/api/v1/orgs/acme/usage/?group_by=colour")

    assert month.status_code == 400 and "month" in month.json()["error"]["fields"]
    assert group.status_code == 400 and "group_by" in group.json()["error"]["fields"]


def test_a_past_month_is_asked_by_name(spent, api, make_usage):
    make_usage(spent.vision, cost="1.50", started_at=dt.datetime(2025, 3, 9, tzinfo=dt.UTC))
    body = api(spent.boss).get("/api/v1/orgs/acme/cost/?month=2025-03").json()
    assert body["month"] == "2025-03" and body["total"] == "1.50" and body["forecast"] == "1.50"


def test_usage_and_cost_by_deployment(spent, api):
    from controlplane.finops.models import ServingUsage
    from tests.platform.dashboard.conftest import deployment_of

    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for project, requests, cost in ((spent.vision, 4, "0.40"), (spent.rival, 9, "9.99")):
        ServingUsage.objects.create(
            deployment=deployment_of(project),
            project=project,
            hour=hour,
            requests=requests,
            tokens_in=requests * 10,
            tokens_out=requests * 100,
            cost=Decimal(cost),
        )
    client = api(spent.boss)
    usage = client.get("/api/v1/orgs/acme/usage/?group_by=deployment").json()
    cost = client.get("/api/v1/orgs/acme/cost/?group_by=deployment").json()

    assert [
        (r["project"], r["deployment"], r["requests"], r["tokens_in"], r["tokens_out"], r["cost"])
        for r in usage["rows"]
    ] == [("vision", "chat", 4, 40, 400, "0.40")]  # never the other organisation's
    assert [(r["deployment"], r["cost"]) for r in cost["rows"]] == [("chat", "0.40")]
    assert api(spent.dev).get("/api/v1/orgs/acme/usage/?group_by=deployment").json()["rows"]
