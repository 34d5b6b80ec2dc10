"""Budgets: spend summed over three sources, who sets them, alerts that fire once, the
banner, the webhook delivery, and the hard stop on GPU jobs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from controlplane.audit.models import AuditEvent
from controlplane.finops.alerts import budget_check
from controlplane.finops.models import BudgetAlert, StorageSnapshot, WebhookDelivery
from controlplane.finops.selectors import project_spend

pytestmark = pytest.mark.django_db

URL = "/api/v1/projects/{}/budget/"


def test_spend_sums_attempts_storage_days_and_serving_hours_of_the_month(team, spend):
    today = timezone.now().date()
    spend("1.25")
    spend("0.75")
    spend("9", started_at=timezone.now() - dt.timedelta(days=40))  # another month
    spend("5", project=team.other_project)  # another project
    StorageSnapshot.objects.create(
        project=team.project, day=today, kind="raw", bytes=1, cost=Decimal("0.5")
    )
    month = project_spend(team.project, today)
    assert (month.compute, month.storage, month.serving) == (
        Decimal("2.000000"),
        Decimal("0.500000"),
        Decimal("0"),
    )
    assert month.total == Decimal("2.5")


def test_owners_and_org_admins_set_budgets_engineers_cannot(api, team, org_admin, other_org):
    body = {"amount": "100", "hard_stop": True}
    assert api(team.owner).put(URL.format(team.project.pk), body, format="json").status_code == 200
    assert api(org_admin).put(URL.format(team.project.pk), body, format="json").status_code == 200
    answer = api(team.engineer).put(URL.format(team.project.pk), body, format="json")
    assert answer.status_code == 403
    assert api(team.viewer).get(URL.format(team.project.pk)).json()["budget"]["amount"] == "100.00"
    # Another organisation's admin does not see the project at all.
    assert api(other_org.admin).get(URL.format(team.project.pk)).status_code == 404
    assert api(team.owner).get(URL.format(other_org.project.pk)).status_code == 404


@pytest.mark.parametrize("amount", ["-5", "lots", None, True])
def test_a_bad_amount_is_a_400_naming_it(api, team, amount):
    answer = api(team.owner).put(URL.format(team.project.pk), {"amount": amount}, format="json")
    assert answer.status_code == 400
    assert "amount" in answer.json()["error"]["fields"]


def test_alerts_fire_once_per_threshold_with_audit_and_webhook(team, owner_budget, spend, hook):
    owner_budget("10")
    spend("7")
    assert budget_check(team.project.pk) == []
    spend("1.5")  # 8.5: past 80%
    assert [a.threshold for a in budget_check(team.project.pk)] == [80]
    assert budget_check(team.project.pk) == []  # fired once
    spend("2")  # 10.5: past 100%
    assert [a.threshold for a in budget_check(team.project.pk)] == [100]
    assert budget_check(team.project.pk) == []
    assert BudgetAlert.objects.count() == 2
    audited = AuditEvent.objects.filter(action="finops.budget_alert").order_by("id")
    assert [e.payload["threshold"] for e in audited] == [80, 100]
    deliveries = WebhookDelivery.objects.order_by("id")
    assert [d.payload["threshold"] for d in deliveries] == [80, 100]
    assert deliveries[1].payload["spent"] == "10.50" and deliveries[1].payload["amount"] == "10.00"


def test_a_budget_below_the_spend_is_accepted_and_alerts_at_once(
    api, team, spend, django_capture_on_commit_callbacks
):
    spend("50")
    with django_capture_on_commit_callbacks(execute=True):
        answer = api(team.owner).put(URL.format(team.project.pk), {"amount": "20"}, format="json")
    assert answer.status_code == 200
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [80, 100]
    body = api(team.owner).get(URL.format(team.project.pk)).json()
    assert body["exceeded"] is True and body["percent"] == 250.0
    assert [a["threshold"] for a in body["alerts"]] == [100, 80]


def test_the_project_pages_show_the_banner_after_an_alert(client, team, owner_budget, spend):
    from django.template import Context, Template

    owner_budget("10")
    spend("12")
    budget_check(team.project.pk)
    rendered = Template("{% load finops_tags %}{% budget_banner %}").render(
        Context({"project": team.project})
    )
    assert "Budget spent" in rendered and "12.00 of its 10.00" in rendered
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/budget/").content.decode()
    assert "exceeded" in page and "Save budget" not in page


def test_a_recurring_budget_applies_to_later_months(team, owner_budget):
    from controlplane.finops.selectors import budget_for

    owner_budget("10", month=dt.date(2026, 1, 1))
    assert budget_for(team.project, dt.date(2026, 5, 17)).amount == Decimal("10.00")
    assert budget_for(team.project, dt.date(2025, 12, 1)) is None


# -- the hard stop -------------------------------------------------------------------------


def test_a_spent_budget_with_a_hard_stop_refuses_gpu_jobs_with_409(
    api, team, settings, owner_budget, spend, sent_jobs
):
    settings.TRAINING_QUEUE = "gpu"
    owner_budget("10", hard_stop=True)
    spend("10")
    answer = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/", {"kind": "vae", "params": {}}, format="json"
    )
    assert answer.status_code == 409, answer.json()
    error = answer.json()["error"]
    assert error["code"] == "budget_exceeded"
    month = timezone.now().strftime("%Y-%m")
    assert error["budget"] == {
        "project": team.project.pk,
        "month": month,
        "amount": "10.00",
        "spent": "10.00",
        "currency": "",
        "hard_stop": True,
    }
    assert "budget" in error["message"] and month in error["message"]
    assert sent_jobs == []


def test_without_hard_stop_or_on_cpu_jobs_go_on(api, team, settings, owner_budget, spend):
    owner_budget("10", hard_stop=False)
    spend("20")
    settings.TRAINING_QUEUE = "gpu"
    url = f"/api/v1/projects/{team.project.pk}/jobs/"
    assert api(team.engineer).post(url, {"kind": "vae"}, format="json").status_code == 201
    owner_budget("10", hard_stop=True)
    settings.TRAINING_QUEUE = "cpu"  # a CPU job is not stopped by the budget
    assert api(team.engineer).post(url, {"kind": "vae"}, format="json").status_code == 201


def test_a_spent_budget_refuses_resuming_a_gpu_job(team, settings, owner_budget, spend):
    from controlplane.jobs.models import ArtifactKind, Job, JobArtifact
    from controlplane.jobs.services import JobError, job_resume

    job = Job.objects.create(
        project=team.project, kind="vae", queue="gpu", state="failed", created_by=team.owner
    )
    checkpoint = JobArtifact.objects.create(
        job=job, kind=ArtifactKind.CHECKPOINT, name="c", object_key="k/c", sha256="0", size=1
    )
    owner_budget("1", hard_stop=True)
    spend("2")
    with pytest.raises(JobError) as refused:
        job_resume(job=job, checkpoint=checkpoint, actor=team.owner)
    assert refused.value.code == "budget_exceeded"
    job.refresh_from_db()
    assert job.state == "failed" and job.attempt == 1


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_fire_each_threshold_once(team, owner_budget, spend, hook):
    from tests.threads import in_threads

    owner_budget("10")
    spend("11")
    results = in_threads(
        lambda: budget_check(team.project.pk), lambda: budget_check(team.project.pk)
    )
    assert not any(isinstance(r, BaseException) for r in results), results
    assert sorted(a.threshold for r in results for a in r) == [80, 100]
    assert BudgetAlert.objects.count() == 2 and WebhookDelivery.objects.count() == 2
