"""The overview's figures are right on a small hand-made data set: spend, budget share,
forecast, spend by kind, GPU hours, idle GPUs, storage and its growth, queued reasons,
success rate and time to first metric."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from controlplane.dashboard import selectors
from controlplane.finops import overview_selectors as money
from controlplane.finops.models import Budget, ServingUsage, StorageSnapshot
from controlplane.jobs.models import Job, JobDispatch, JobMetric
from tests.platform.dashboard.conftest import MONTH, NOW, deployment_of

pytestmark = pytest.mark.django_db


def at(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, tzinfo=dt.UTC)


def scope_of(world, user=None):
    return money.overview_scope(user or world.boss, world.org)


def test_spend_sums_jobs_storage_and_serving_of_the_month_only(org_world, make_usage):
    w = org_world
    make_usage(w.vision, cost="10.50", started_at=at(2))
    make_usage(w.vision, cost="4.50", started_at=at(10, 23))
    make_usage(w.vision, cost="99", started_at=dt.datetime(2026, 10, 31, 23, tzinfo=dt.UTC))
    StorageSnapshot.objects.create(
        project=w.vision, day=dt.date(2026, 11, 3), kind="raw", bytes=10, cost=Decimal("2")
    )
    StorageSnapshot.objects.create(
        project=w.vision, day=dt.date(2026, 10, 30), kind="raw", bytes=10, cost=Decimal("50")
    )
    make_usage(w.rival, cost="1000", started_at=at(2))

    rows = {row.slug: row for row in money.spend_by_project(scope_of(w), MONTH, NOW)}

    assert set(rows) == {"vision", "speech"}
    assert rows["vision"].jobs == Decimal("15") and rows["vision"].storage == Decimal("2")
    assert rows["vision"].total == Decimal("17") and rows["speech"].total == 0


def test_forecast_is_linear_on_days_elapsed_and_budget_share_uses_the_recurring_budget(
    org_world, make_usage
):
    w = org_world
    make_usage(w.vision, cost="20", started_at=at(5))
    Budget.objects.create(project=w.vision, month=dt.date(2026, 9, 1), amount=Decimal("80"))
    Budget.objects.create(
        project=w.speech, month=dt.date(2026, 9, 1), amount=Decimal("5"), recurring=False
    )

    rows = {row.slug: row for row in money.spend_by_project(scope_of(w), MONTH, NOW)}

    # 20 spent in 10 days of a 30-day month: 60 by its end.
    assert rows["vision"].forecast == Decimal("60")
    assert rows["vision"].budget == Decimal("80") and rows["vision"].budget_percent == 25.0
    assert rows["vision"].forecast_over_budget is False
    assert rows["speech"].budget is None  # September's one-off budget does not carry over
    # A month's own budget wins over an earlier recurring one.
    Budget.objects.create(project=w.vision, month=MONTH, amount=Decimal("40"))
    vision = money.spend_by_project(scope_of(w), MONTH, NOW)[1]
    assert vision.budget == Decimal("40") and vision.forecast_over_budget is True


def test_a_past_months_forecast_is_its_spend(org_world, make_usage):
    make_usage(org_world.vision, cost="7", started_at=dt.datetime(2026, 10, 4, tzinfo=dt.UTC))
    rows = money.spend_by_project(scope_of(org_world), dt.date(2026, 10, 1), NOW)
    assert [r.forecast for r in rows if r.slug == "vision"] == [Decimal("7")]


def test_spend_by_kind_and_day_add_up_to_the_total(org_world, make_usage):
    w = org_world
    make_usage(w.vision, kind="train", cost="3", started_at=at(2))
    make_usage(w.speech, kind="train", cost="2", started_at=at(2, 5))
    make_usage(w.speech, kind="evaluate", cost="1", started_at=at(4))
    StorageSnapshot.objects.create(
        project=w.speech, day=dt.date(2026, 11, 4), kind="models", bytes=1, cost=Decimal("0.5")
    )
    deployment = deployment_of(w.speech)
    ServingUsage.objects.create(
        deployment=deployment, project=w.speech, hour=at(4, 3), tokens_in=5, cost=Decimal("0.25")
    )
    scope = scope_of(w)

    kinds = money.spend_by_kind(scope, MONTH)
    days = money.spend_by_day(scope, MONTH)

    assert [(r["source"], r["kind"], r["cost"]) for r in kinds] == [
        ("jobs", "evaluate", Decimal("1")),
        ("jobs", "train", Decimal("5")),
        ("storage", "models", Decimal("0.5")),
        ("serving", "tokens", Decimal("0.25")),
    ]
    assert [(r["day"].day, r["cost"]) for r in days] == [(2, Decimal("5")), (4, Decimal("1.75"))]


def test_gpu_hours_and_utilisation_weighted_by_gpu_time(org_world, make_usage):
    w = org_world
    make_usage(w.vision, started_at=at(2), gpu_seconds=3 * 3600, gpu_util_mean=90.0)
    make_usage(w.vision, started_at=at(3), gpu_seconds=3600, gpu_util_mean=10.0)
    make_usage(w.speech, started_at=at(3), cpu_seconds=7200)

    totals = money.usage_totals(scope_of(w), MONTH)

    assert totals["gpu_hours"] == 4.0 and totals["cpu_hours"] == 2.0
    assert totals["gpu_util_mean"] == 70.0 and totals["attempts"] == 3


def test_idle_gpus_are_running_jobs_flagged_idle_with_the_cost_of_every_attempt(
    org_world, make_usage
):
    w = org_world
    first = make_usage(w.vision, cost="3", state="running", started_at=at(2), device_count=2)
    first.job.attempt = 2
    first.job.save()
    make_usage(w.vision, job=first.job, attempt=2, cost="4", started_at=at(3), idle_since=at(3, 2))
    make_usage(w.vision, cost="9", state="succeeded", started_at=at(3), idle_since=at(3, 1))

    idle = money.idle_gpus(scope_of(w))

    assert [(row.job_id, row.cost_so_far) for row in idle] == [(first.job_id, Decimal("7"))]


def test_storage_shows_each_projects_latest_snapshot_and_90_days_of_growth(org_world):
    w = org_world
    for day, size in [(1, 100), (2, 150)]:
        StorageSnapshot.objects.create(
            project=w.vision, day=dt.date(2026, 11, day), kind="raw", bytes=size
        )
    StorageSnapshot.objects.create(
        project=w.vision, day=dt.date(2026, 11, 1), kind="models", bytes=7
    )
    StorageSnapshot.objects.create(
        project=w.vision,
        day=dt.date(2026, 1, 1),
        kind="archive",
        bytes=10**9,  # too old
    )
    scope = scope_of(w)

    rows = {row.slug: row for row in money.storage_by_project(scope, dt.date(2026, 11, 10))}
    growth = money.storage_growth(scope, dt.date(2026, 11, 10))

    # The latest snapshot (the 2nd) has no models row: they are gone.
    assert rows["vision"].by_kind == {"raw": 150} and rows["vision"].total_bytes == 150
    assert rows["vision"].day == dt.date(2026, 11, 2)
    assert rows["speech"].total_bytes == 0 and rows["speech"].day is None
    assert growth == {
        "models": [(dt.date(2026, 11, 1), 7)],
        "raw": [(dt.date(2026, 11, 1), 100), (dt.date(2026, 11, 2), 150)],
    }


def _job(project, **fields):
    fields.setdefault("kind", "train")
    return Job.objects.create(project=project, created_by=project.created_by, **fields)


def test_queued_jobs_say_why_they_wait(org_world):
    w = org_world
    quota = _job(w.vision, state="queued", held_for="quota")
    sent = _job(w.vision, state="queued")
    JobDispatch.objects.create(job=sent, attempt=1, state="sent", next_attempt_at=NOW)
    pending = _job(w.speech, state="queued")
    JobDispatch.objects.create(job=pending, attempt=1, state="pending", next_attempt_at=NOW)
    _job(w.rival, state="queued", held_for="quota")
    needs = "needs 8 GPUs; largest worker has 4"
    capacity = _job(w.speech, state="queued", held_for="capacity", held_reason=needs)

    figures = selectors.job_figures(scope_of(w), NOW)
    rows = {row["job"]: row for row in selectors.queued_jobs(scope_of(w))}

    assert figures.queued == 4
    assert figures.queued_by_reason == {
        "quota": 1,
        "capacity": 1,
        "waiting dispatch": 1,
        "no worker": 1,
    }
    assert {job: row["reason"] for job, row in rows.items()} == {
        quota.pk: "quota",
        sent.pk: "no worker",
        pending.pk: "waiting dispatch",
        capacity.pk: "capacity",
    }
    assert rows[capacity.pk]["detail"] == needs and rows[quota.pk]["detail"] == ""


def test_success_rate_over_30_days_leaves_out_cancelled_and_older_jobs(org_world):
    w = org_world
    for state in ("succeeded", "succeeded", "succeeded", "failed", "cancelled"):
        _job(w.vision, state=state, finished_at=NOW - dt.timedelta(days=3))
    _job(w.vision, state="failed", finished_at=NOW - dt.timedelta(days=31))
    _job(w.vision, state="running")

    figures = selectors.job_figures(scope_of(w), NOW)

    assert (figures.succeeded, figures.failed, figures.success_rate) == (3, 1, 75.0)
    assert figures.running == 1


def test_mean_time_to_first_metric_counts_from_the_first_attempts_start(org_world, make_usage):
    w = org_world
    started = NOW - dt.timedelta(hours=2)
    for project, delay in [(w.vision, 30), (w.speech, 90)]:
        job = make_usage(project, started_at=started).job
        # A resumed attempt starts later; the delay still counts from the first.
        make_usage(project, job=job, attempt=2, started_at=started + dt.timedelta(hours=1))
        for step, extra in [(1, 0), (2, 500)]:
            JobMetric.objects.create(
                job=job,
                key="loss",
                step=step,
                value=1.0,
                recorded_at=started + dt.timedelta(seconds=delay + extra),
            )
    make_usage(w.vision, started_at=started)  # no metric yet: not counted
    old = make_usage(w.vision, started_at=NOW - dt.timedelta(days=40)).job
    JobMetric.objects.create(job=old, key="loss", step=1, value=1.0, recorded_at=NOW)

    figures = selectors.job_figures(scope_of(w), NOW)

    assert figures.mean_seconds_to_first_metric == 60.0 and figures.jobs_with_metrics == 2


def test_models_in_production_carry_their_lineage_risk(org_world):
    from controlplane.gdpr.models import ErasedDataFlag, SubjectRequest
    from controlplane.policies.models import Violation
    from controlplane.registry.models import ModelAlias, ModelEvaluation

    w = org_world
    deployment = deployment_of(w.speech)  # m v1 behind a running deployment
    version = deployment.target_version
    ModelAlias.objects.create(
        model=version.model, name="production", version=version, moved_by=w.boss, moved_at=NOW
    )
    request = SubjectRequest.objects.create(
        project=w.speech,
        kind="erasure",
        legal_basis="Art. 17",
        filed_by=w.boss,
        received_at=NOW,
        deadline_at=NOW + dt.timedelta(days=30),
    )
    ErasedDataFlag.objects.create(model_version=version, request=request)
    Violation.objects.create(
        project=w.speech,
        rule="evaluation_required",
        subject_type="model_version",
        subject_id=version.pk,
        subject_label="m v1",
        reason="r",
        policy_version="project v1",
        last_seen_at=NOW,
    )
    ModelEvaluation.objects.create(
        version=version,
        job=_job(w.speech, kind="evaluate"),
        finished_at=NOW - dt.timedelta(days=12),
    )

    rows = selectors.production_models(scope_of(w), NOW)
    requests = selectors.open_subject_requests(scope_of(w), NOW)

    assert rows == [
        {
            "project_id": w.speech.pk,
            "project": "speech",
            "model": "m",
            "version": 1,
            "aliases": ["production"],
            "deployments": ["chat"],
            "trained_on_erased_data": True,
            "open_violations": 1,
            "evaluation_age_days": 12,
        }
    ]
    assert [(r["request"], r["days_left"], r["overdue"]) for r in requests] == [
        (request.pk, 30, False)
    ]
    # The engineer of Vision only does not see Speech's model.
    assert selectors.production_models(scope_of(w, w.dev), NOW) == []
