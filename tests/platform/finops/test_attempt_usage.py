"""Usage per job attempt, from the workers' events: stored, summed, priced, watched for idle GPUs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from workers.protocol import USAGE_FIELD, EventType, JobEvent

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

NOV_10 = datetime(2026, 11, 10, 12, tzinfo=UTC).timestamp()
NOV_20 = datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def job(team, make_upload):
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b"a\nb\n")
    return job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )


def rate_card(project, version: int, effective: datetime, cpu_hour="1", gpu_hour="4"):
    from controlplane.finops.models import RateCard
    from controlplane.finops.rates import validate_rates

    rates, currency = validate_rates(
        {
            "cpu_hour": cpu_hour,
            "gpu_hour": {"default": gpu_hour},
            "storage_gb_month": dict.fromkeys(
                ["raw", "derived", "checkpoints", "models", "archive"], "0"
            ),
            "tokens_million": "0",
        }
    )
    return RateCard.objects.create(
        organisation_id=project.organisation_id,
        version=version,
        rates=rates,
        currency=currency,
        effective_from=effective,
    )


def usage(**figures) -> dict:
    return {
        "wall_seconds": 10.0,
        "cpu_seconds": 5.0,
        "peak_rss_bytes": 1000,
        "device_type": "cpu",
        "device_count": 0,
        "gpu_seconds": 0.0,
        "gpu_util": [],
        "bytes_read": 0,
        "bytes_written": 0,
        **figures,
    }


def apply(job, seq, event_type, *, attempt=1, at=NOV_10, **payload):
    from controlplane.jobs.services import job_apply_event

    event = JobEvent(
        job_id=job.pk, attempt=attempt, seq=seq, type=event_type, payload=payload, time=at
    )
    return job_apply_event(event)


def attempt_usage(job, attempt=1):
    from controlplane.finops.models import JobAttemptUsage

    return JobAttemptUsage.objects.get(job=job, attempt=attempt)


def audits(action):
    from controlplane.audit.models import AuditEvent

    return list(AuditEvent.objects.filter(action=action))


@pytest.mark.slow
def test_a_real_job_stores_its_attempt_usage_priced_at_the_rate_card(team, job, run_on_worker):
    rate_card(team.project, 1, datetime(2020, 1, 1, tzinfo=UTC), cpu_hour="3600")
    job = run_on_worker(job)
    assert job.state == "succeeded"
    row = attempt_usage(job)
    assert row.final and row.project == team.project and row.kind == "inspect"
    assert row.queue == "cpu" and row.worker == job.worker
    assert row.bytes_read >= 4 and row.bytes_written > 0 and row.peak_rss_bytes > 0
    assert row.device_type == "cpu" and row.device_count == 0
    assert 0 < row.wall_seconds < 60
    # 3,600 a CPU-hour: the cost is the CPU seconds.
    assert row.rate_card.version == 1
    assert row.cost == Decimal(str(row.cpu_seconds)).quantize(Decimal("0.000001"))


def test_old_events_without_usage_still_apply(job):
    assert apply(job, 0, EventType.STARTED, worker="w1")
    assert apply(job, 1, EventType.HEARTBEAT)
    assert apply(job, 2, EventType.FINISHED, result={})
    job.refresh_from_db()
    assert job.state == "succeeded"
    assert not job.usage.exists()


def test_a_malformed_usage_is_skipped_and_the_event_applies(job):
    apply(job, 0, EventType.STARTED, worker="w1")
    assert apply(job, 1, EventType.FINISHED, result={}, usage=usage(cpu_seconds=-3))
    job.refresh_from_db()
    assert job.state == "succeeded" and not job.usage.exists()


def test_a_resumed_jobs_usage_is_the_sum_of_its_attempts(team, job, api):
    from controlplane.finops.selectors import job_usage

    rate_card(team.project, 1, datetime(2026, 11, 1, tzinfo=UTC), cpu_hour="1")
    apply(job, 0, EventType.STARTED, worker="w1")
    apply(job, 1, EventType.HEARTBEAT, usage=usage(wall_seconds=100, cpu_seconds=1800))
    apply(
        job,
        2,
        EventType.FAILED,
        error="store away",
        retryable=True,
        usage=usage(wall_seconds=120, cpu_seconds=1800, peak_rss_bytes=5000, bytes_read=10),
    )
    job.refresh_from_db()
    assert job.attempt == 2 and job.state == "queued"
    apply(job, 0, EventType.STARTED, attempt=2, worker="w2", at=NOV_20)
    apply(
        job,
        1,
        EventType.FINISHED,
        attempt=2,
        at=NOV_20,
        result={},
        usage=usage(wall_seconds=30, cpu_seconds=3600, peak_rss_bytes=3000, bytes_read=7),
    )
    totals = job_usage(job)["total"]
    assert totals["wall_seconds"] == 150 and totals["cpu_seconds"] == 5400
    assert totals["peak_rss_bytes"] == 5000 and totals["bytes_read"] == 17
    assert totals["costs"] == [{"currency": "EUR", "amount": Decimal("1.50")}]
    assert [row.final for row in job_usage(job)["attempts"]] == [True, True]
    body = api(team.viewer).get(f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/").json()
    assert body["usage"]["total"]["cost"] == "1.50"
    assert [a["attempt"] for a in body["usage"]["attempts"]] == [1, 2]
    assert body["usage"]["attempts"][1]["worker"] == "w2"
    assert body["usage"]["attempts"][0]["rate_card_version"] == 1


def test_redelivered_and_late_reports_keep_the_largest_figures_and_each_sample_once(job):
    apply(job, 0, EventType.STARTED, worker="w1")
    gpu = {"device_type": "NVIDIA H100", "device_count": 1}
    apply(
        job,
        2,
        EventType.HEARTBEAT,
        usage=usage(
            wall_seconds=40, cpu_seconds=30, gpu_seconds=40, **gpu, gpu_util=[[3, 90], [4, 70]]
        ),
    )
    # seq 1 arrives late (after a gap): smaller figures, samples before and one already seen.
    apply(
        job,
        1,
        EventType.HEARTBEAT,
        usage=usage(
            wall_seconds=20,
            cpu_seconds=15,
            gpu_seconds=20,
            **gpu,
            gpu_util=[[1, 10], [2, 30], [3, 90]],
        ),
    )
    # seq 2 again (a redelivered message): changes nothing.
    assert not apply(job, 2, EventType.HEARTBEAT, usage=usage(wall_seconds=40, gpu_util=[[5, 0]]))
    row = attempt_usage(job)
    assert (row.wall_seconds, row.cpu_seconds, row.gpu_seconds) == (40, 30, 40)
    assert row.device_type == "NVIDIA H100" and row.device_count == 1
    assert row.gpu_util_samples == [[1, 10], [2, 30], [3, 90], [4, 70]]
    assert row.gpu_util_sample_count == 4 and row.gpu_util_mean == 50.0
    assert not row.final


def test_each_attempt_is_priced_at_the_rate_card_in_force_when_it_started(team, job):
    from controlplane.finops.selectors import project_usage

    rate_card(team.project, 1, datetime(2026, 11, 1, tzinfo=UTC), cpu_hour="1", gpu_hour="4")
    rate_card(team.project, 2, datetime(2026, 11, 15, tzinfo=UTC), cpu_hour="2", gpu_hour="6")
    gpu = {"device_type": "NVIDIA H100", "device_count": 1}
    apply(job, 0, EventType.STARTED, worker="w1", at=NOV_10)
    apply(
        job,
        1,
        EventType.FAILED,
        at=NOV_10,
        error="lost",
        retryable=True,
        usage=usage(wall_seconds=1800, cpu_seconds=3600, gpu_seconds=1800, **gpu),
    )
    apply(job, 0, EventType.STARTED, attempt=2, worker="w1", at=NOV_20)
    apply(
        job,
        1,
        EventType.HEARTBEAT,
        attempt=2,
        at=NOV_20,
        usage=usage(wall_seconds=1800, cpu_seconds=3600, gpu_seconds=1800, **gpu),
    )
    first, second = attempt_usage(job, 1), attempt_usage(job, 2)
    assert (first.rate_card.version, first.cost) == (1, Decimal("3.00"))  # 1 + 4 x 0.5
    assert (second.rate_card.version, second.cost) == (2, Decimal("5.00"))  # 2 + 6 x 0.5
    # A card created later, even one dated back, reprices nothing already priced.
    rate_card(team.project, 3, datetime(2026, 11, 16, tzinfo=UTC), cpu_hour="100")
    apply(
        job,
        2,
        EventType.HEARTBEAT,
        attempt=2,
        at=NOV_20 + 60,
        usage=usage(wall_seconds=1860, cpu_seconds=3600, gpu_seconds=1800, **gpu),
    )
    assert attempt_usage(job, 2).rate_card.version == 2
    november = project_usage(
        team.project, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    )
    assert november["cost"] == Decimal("8.00") and november["attempts"] == 2
    assert november["gpu_hours"] == 1.0 and november["cpu_hours"] == 2.0
    october = project_usage(
        team.project, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    )
    assert october["cost"] == 0 and october["attempts"] == 0


def test_an_attempt_started_before_any_rate_card_costs_nothing_and_stays_so(team, job):
    apply(job, 0, EventType.STARTED, worker="w1")
    apply(job, 1, EventType.HEARTBEAT, usage=usage(cpu_seconds=3600))
    assert attempt_usage(job).rate_card is None and attempt_usage(job).cost == 0
    rate_card(team.project, 1, datetime(2026, 1, 1, tzinfo=UTC))  # dated before it started
    apply(job, 2, EventType.FINISHED, result={}, usage=usage(cpu_seconds=7200))
    row = attempt_usage(job)
    assert row.rate_card is None and row.cost == 0 and row.cpu_seconds == 7200


def _samples(start: float, minutes: int, percent: float) -> list[list[float]]:
    return [[start + 60 * minute, percent] for minute in range(minutes)]


def test_an_idle_gpu_is_flagged_once_with_its_cost_and_cleared_when_it_works(
    team, job, settings, client
):
    from controlplane.finops.selectors import idle_gpu_attempts

    settings.FINOPS_IDLE_GPU_PERCENT = 20
    settings.FINOPS_IDLE_GPU_MINUTES = 10
    rate_card(team.project, 1, datetime(2026, 11, 1, tzinfo=UTC), cpu_hour="0", gpu_hour="6")
    org = team.project.organisation
    gpu = {"device_type": "NVIDIA H100", "device_count": 1}
    t0 = NOV_10
    apply(job, 0, EventType.STARTED, worker="gpu-1", at=t0)

    def beat(seq, samples, wall):
        apply(
            job,
            seq,
            EventType.HEARTBEAT,
            at=t0 + wall,
            usage=usage(wall_seconds=wall, gpu_seconds=wall, gpu_util=samples, **gpu),
        )

    beat(1, _samples(t0, 3, 95), 180)  # busy for three minutes
    beat(2, _samples(t0 + 180, 8, 5), 660)  # then idle: eight minutes is not yet "idle"
    assert attempt_usage(job).idle_since is None
    beat(3, _samples(t0 + 660, 4, 12), 900)  # idle from t0+180 to t0+840: 11 minutes
    row = attempt_usage(job)
    assert row.idle_since == datetime.fromtimestamp(t0 + 180, tz=UTC)
    (flagged,) = audits("job.gpu_idle")
    assert flagged.payload["cost_so_far"] == "1.50" and flagged.payload["currency"] == "EUR"
    assert flagged.payload["threshold_percent"] == 20
    assert list(idle_gpu_attempts(organisation=org)) == [row]
    assert list(idle_gpu_attempts(projects=[team.other_project])) == []
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert 'id="gpu-idle"' in page and "under 20%" in page
    beat(4, _samples(t0 + 900, 2, 3), 1020)  # still idle: flagged once only
    assert len(audits("job.gpu_idle")) == 1
    beat(5, [[t0 + 1080, 85]], 1080)  # working again
    assert attempt_usage(job).idle_since is None
    assert len(audits("job.gpu_active")) == 1
    assert list(idle_gpu_attempts(organisation=org)) == []
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert 'id="gpu-idle"' not in page


@pytest.mark.parametrize("role", ["owner", "engineer", "viewer", "compliance"])
def test_every_member_sees_the_resources_panel_and_outsiders_get_404(team, job, client, role):
    rate_card(team.project, 1, datetime(2026, 11, 1, tzinfo=UTC), cpu_hour="2")
    apply(job, 0, EventType.STARTED, worker="w1")
    apply(job, 1, EventType.FAILED, error="x", retryable=True, usage=usage(cpu_seconds=1800))
    apply(job, 0, EventType.STARTED, attempt=2, worker="w2", at=NOV_20)
    apply(
        job,
        1,
        EventType.FINISHED,
        attempt=2,
        at=NOV_20,
        result={},
        usage=usage(cpu_seconds=3600, peak_rss_bytes=3 * 1024**3, bytes_written=2048),
    )
    url = f"/projects/{team.project.pk}/jobs/{job.pk}/"
    client.force_login(getattr(team, role))
    page = client.get(url).content.decode()
    assert 'id="job-usage"' in page and "Resources" in page
    assert "1.5000 CPU-hours" in page and "3.2 GB" in page and "3.00 EUR" in page
    assert "Per attempt" in page and "<code>w2</code>" in page
    client.force_login(team.outsider)
    assert client.get(url).status_code == 404


def test_a_job_without_usage_has_no_panel(team, job, client):
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert 'id="job-usage"' not in page


def test_usage_keys_match_the_protocol():
    from workers.protocol import UsageReport

    assert set(usage()) == set(UsageReport.__dataclass_fields__)
    assert USAGE_FIELD == "usage"
