"""A running job's page polls only the parts that change: the header strip, new events,
the checkpoints (204 until their count changes), the resources, and the charts' data
(JSON for static/js/charts.js). Once the job has ended the page reloads once and polls
nothing more."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from tests.platform.jobs.job_shapes import build_world, make_job
from tests.platform.test_security_headers import inline_code

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(team, make_upload):
    return build_world(team, make_upload)


@pytest.fixture
def running(world):
    return make_job(world, "pretrain", "running")


def _url(team, job) -> str:
    return f"/projects/{team.project.pk}/jobs/{job.pk}/"


def test_a_running_job_polls_its_parts_not_the_whole_page(team, running, client):
    client.force_login(team.viewer)
    page = client.get(_url(team, running)).content.decode()
    assert 'id="job-status"' not in page  # the old whole-block poll
    assert page.count('hx-trigger="every') == 4  # header, usage, checkpoints, new events
    assert "?part=header" in page and "?part=events&amp;after=" in page
    assert f'data-live-charts="{_url(team, running)}charts.json"' in page


def test_a_finished_job_polls_nothing(team, world, client):
    client.force_login(team.viewer)
    page = client.get(_url(team, make_job(world, "pretrain", "succeeded"))).content.decode()
    # (The layout's audit badge loads once, hx-trigger="load"; nothing polls.)
    assert 'hx-trigger="every' not in page and "data-live-charts" not in page


def test_the_header_reloads_the_page_once_the_job_has_ended(team, running, client):
    client.force_login(team.viewer)
    response = client.get(_url(team, running), {"part": "header"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "HX-Refresh" not in response
    assert "<html" not in response.content.decode() and "40 %" in response.content.decode()
    running.state, running.finished_at = "succeeded", timezone.now()
    running.save()
    response = client.get(_url(team, running), {"part": "header"}, HTTP_HX_REQUEST="true")
    assert response["HX-Refresh"] == "true"


def test_new_events_come_with_the_next_poller_and_nothing_new_is_a_204(team, running, client):
    from controlplane.jobs.models import JobEventRecord

    client.force_login(team.viewer)
    newest = JobEventRecord.objects.filter(job=running).order_by("-id").first()
    quiet = client.get(_url(team, running), {"part": "events", "after": newest.pk})
    assert quiet.status_code == 204
    added = JobEventRecord.objects.create(
        job=running,
        attempt=1,
        seq=40,
        type="log",
        payload={"message": "epoch two"},
        emitted_at=timezone.now(),
    )
    JobEventRecord.objects.create(
        job=running, attempt=1, seq=41, type="heartbeat", payload={}, emitted_at=timezone.now()
    )
    fresh = client.get(_url(team, running), {"part": "events", "after": newest.pk}).content.decode()
    assert "epoch two" in fresh and "heartbeat" not in fresh
    assert f"after={added.pk}" in fresh  # the next poll asks from the newest shown
    assert fresh.index('id="events-poller"') < fresh.index("epoch two")  # newest on top


def test_the_checkpoints_poll_answers_only_when_a_checkpoint_arrives(team, running, client):
    from controlplane.jobs.models import ArtifactKind, JobArtifact

    client.force_login(team.viewer)
    assert client.get(_url(team, running), {"part": "checkpoints", "have": 1}).status_code == 204
    JobArtifact.objects.create(
        job=running,
        kind=ArtifactKind.CHECKPOINT,
        name="checkpoint-200",
        step=200,
        object_key=f"{running.output_prefix}ckpt-200.pt",
        sha256="0" * 64,
        size=2_000_000,
    )
    table = client.get(_url(team, running), {"part": "checkpoints", "have": 1}).content.decode()
    assert '<td class="num">200</td>' in table and "2.0 MB" in table


@pytest.mark.parametrize(
    "query",
    [
        {"part": "events", "after": "x"},
        {"part": "events"},
        {"part": "checkpoints", "have": "²"},
        {"part": "everything"},
    ],
)
def test_a_malformed_poll_is_a_400_not_a_500(team, running, client, query):
    client.force_login(team.viewer)
    assert client.get(_url(team, running), query).status_code == 400


def test_charts_data_puts_train_and_val_loss_on_one_chart(team, running, client):
    client.force_login(team.viewer)
    body = client.get(f"{_url(team, running)}charts.json").json()
    assert body["live"] is True
    (loss,) = body["charts"]  # train/lr is constant: named under the charts, not drawn
    assert loss["title"] == "loss" and loss["x_label"] == "step"
    assert [s["label"] for s in loss["series"]] == ["train/loss", "val/loss"]
    assert loss["series"][0]["points"][0] == [0, 3.0]
    page = client.get(_url(team, running)).content.decode()
    assert "Constant through the run: <code>train/lr</code> = 0.0006" in page


def test_charts_data_follows_new_points(team, running, client):
    from django.core.cache import cache

    from controlplane.jobs.models import JobMetric

    client.force_login(team.viewer)
    before = client.get(f"{_url(team, running)}charts.json").json()["charts"][0]["series"][0]
    JobMetric.objects.create(
        job=running, key="train/loss", step=500, value=0.5, recorded_at=timezone.now()
    )
    cache.clear()  # a live run's charts are shared for LIVE_CHARTS_SECONDS
    after = client.get(f"{_url(team, running)}charts.json").json()["charts"][0]["series"][0]
    assert after["points"][-1] == [500, 0.5] and len(after["points"]) == len(before["points"]) + 1


def test_the_job_page_runs_under_the_content_security_policy(team, running, client):
    client.force_login(team.engineer)
    response = client.get(_url(team, running))
    page = response.content.decode()
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert inline_code(page) == []
    assert "/static/vendor/uplot/uPlot.iife.min.js" in page and "/static/js/charts.js" in page
    assert (
        "<style" not in page
        and "http://" not in page.replace("http://testserver", "")
        and "https://" not in page
    )
    data = page.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["title"] == "loss"


def test_events_filter_by_type_and_page_fifty_at_a_time(team, running, client):
    from controlplane.jobs.models import JobEventRecord

    now = timezone.now()
    JobEventRecord.objects.bulk_create(
        JobEventRecord(
            job=running,
            attempt=1,
            seq=100 + n,
            type="metric",
            payload={"step": n, "values": {"train/loss": 1.0 / (n + 1)}},
            emitted_at=now,
        )
        for n in range(60)
    )
    client.force_login(team.viewer)
    page = client.get(_url(team, running), {"event_type": "metric"}).content.decode()
    events = page.split('id="job-events"')[1]
    assert events.count('<tr class="event metric">') == 50 and "page 1 of 2 (61 events)" in events
    assert "step 59: train/loss 0.01667" in events  # newest first, a summary, not a dict
    assert '<details class="payload"><summary>payload</summary>' in events
    assert "events-poller" not in events  # a filtered list is not live
    second = client.get(
        _url(team, running), {"event_type": "metric", "events_page": 2}
    ).content.decode()
    assert second.split('id="job-events"')[1].count('<tr class="event metric">') == 11
    unknown = client.get(_url(team, running), {"event_type": "<script>"}).content.decode()
    assert "page 1 of 2 (65 events)" in unknown  # an unknown type: every event, no error
    beats = client.get(_url(team, running), {"event_type": "heartbeat"}).content.decode()
    assert '<tr class="event heartbeat">' in beats


def test_a_burst_of_events_arrives_over_a_few_polls_none_skipped(team, running, client):
    import re

    from controlplane.jobs.models import JobEventRecord

    newest = JobEventRecord.objects.filter(job=running).order_by("-id").first()
    JobEventRecord.objects.bulk_create(
        JobEventRecord(
            job=running,
            attempt=1,
            seq=200 + n,
            type="log",
            payload={"message": f"line {n}"},
            emitted_at=timezone.now(),
        )
        for n in range(60)
    )
    client.force_login(team.viewer)
    first = client.get(_url(team, running), {"part": "events", "after": newest.pk}).content.decode()
    assert "line 0<" in first and "line 49<" in first and "line 50<" not in first
    after = re.search(r"after=(\d+)", first).group(1)
    second = client.get(_url(team, running), {"part": "events", "after": after}).content.decode()
    assert "line 50<" in second and "line 59<" in second and "line 49<" not in second
