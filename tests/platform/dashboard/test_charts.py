"""Run pages draw metric curves; long runs are averaged down in the database."""

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(team, make_upload):
    from controlplane.jobs.models import JobMetric
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b"a\n")
    jobs = [
        job_create(
            project=team.project,
            kind="inspect",
            params={"upload_id": upload.pk},
            actor=team.engineer,
            experiment="lr-sweep",
        )
        for _ in range(2)
    ]
    now = timezone.now()
    for n, job in enumerate(jobs):
        JobMetric.objects.bulk_create(
            JobMetric(
                job=job, key="train/loss", step=step, value=5.0 - step / 1000 - n, recorded_at=now
            )
            for step in range(3000)
        )
    return jobs


def test_long_series_are_averaged_into_few_points(runs):
    from controlplane.jobs.selectors import metric_series

    series = metric_series(runs, max_points=100)["train/loss"]
    assert set(series) == {runs[0].pk, runs[1].pk}
    points = series[runs[0].pk]
    assert 90 <= len(points) <= 100
    assert points[0][1] == pytest.approx(5.0 - 14.5 / 1000)  # mean of steps 0..29
    assert points[-1][0] == 2999


def test_run_page_and_compare_view_draw_the_curves(team, client, runs):
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{runs[0].pk}/").content.decode()
    assert "<svg" in page and "train/loss" in page and "lr-sweep" in page
    compare = client.get(
        f"/projects/{team.project.pk}/experiments/",
        {"experiment": "lr-sweep", "jobs": [runs[0].pk, runs[1].pk]},
    ).content.decode()
    assert compare.count("<polyline") == 2 and f"job {runs[1].pk}" in compare
    client.force_login(team.outsider)
    assert client.get(f"/projects/{team.project.pk}/experiments/").status_code == 404


def test_run_page_costs_the_same_queries_whatever_the_number_of_curves(team, client, runs):
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from controlplane.jobs.models import JobMetric

    client.force_login(team.viewer)
    page = f"/projects/{team.project.pk}/jobs/{runs[0].pk}/"
    with CaptureQueriesContext(connection) as one_curve:
        client.get(page)
    now = timezone.now()
    JobMetric.objects.bulk_create(
        # Curves that change (a constant one is named under the charts, not drawn).
        JobMetric(job=runs[0], key=f"extra/{n}", step=step, value=n + step / 100, recorded_at=now)
        for n in range(8)
        for step in range(50)
    )
    cache.clear()  # a live run's charts are shared for a moment (LIVE_CHARTS_SECONDS)
    with CaptureQueriesContext(connection) as nine_curves:
        body = client.get(page).content.decode()
    assert body.count("<polyline") == 9
    assert len(nine_curves) == len(one_curve)


def test_a_finished_runs_charts_are_read_once(team, client, runs):
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from controlplane.jobs.models import Job, JobState

    cache.clear()
    Job.objects.filter(pk=runs[0].pk).update(state=JobState.SUCCEEDED, finished_at=timezone.now())
    client.force_login(team.viewer)
    page = f"/projects/{team.project.pk}/jobs/{runs[0].pk}/"
    with CaptureQueriesContext(connection) as first:
        first_body = client.get(page).content.decode()
    with CaptureQueriesContext(connection) as second:
        second_body = client.get(page).content.decode()
    assert len(second) == len(first) - 2  # the two series queries, served from the cache
    assert first_body.count("<polyline") == second_body.count("<polyline") == 1


def test_a_live_runs_charts_are_shared_for_a_moment(team, client, runs, monkeypatch):
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from controlplane.jobs import selectors
    from controlplane.jobs.models import JobMetric

    cache.clear()
    client.force_login(team.viewer)
    page = f"/projects/{team.project.pk}/jobs/{runs[0].pk}/"
    with CaptureQueriesContext(connection) as first:
        client.get(page)
    JobMetric.objects.create(
        job=runs[0], key="val/loss", step=1, value=1.0, recorded_at=timezone.now()
    )
    with CaptureQueriesContext(connection) as polled:
        body = client.get(page).content.decode()
    assert len(polled) == len(first) - 2 and body.count("<polyline") == 1
    monkeypatch.setattr(selectors, "LIVE_CHARTS_SECONDS", 0)  # the moment has passed
    cache.clear()
    assert client.get(page).content.decode().count("<polyline") == 2
