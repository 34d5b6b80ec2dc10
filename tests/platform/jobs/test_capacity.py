"""Workers advertise their devices; a job is sent only where a live worker can run it,
else it stays queued with the reason, and goes as soon as a capable worker appears."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.capacity import capacity_hold_reason
from controlplane.jobs.models import Job, JobDispatch, Worker
from controlplane.jobs.services.outbox import dispatch_enqueue, dispatch_outbox_send_due
from controlplane.jobs.tasks import worker_heartbeat
from workers.protocol import RUN_JOB_TASK

pytestmark = pytest.mark.django_db


def beat(name: str, *, gpus: int = 0, cpus: int = 8, queues=("gpu",), **extra) -> int:
    """A worker's heartbeat as the control task receives it; returns the jobs it sent."""
    message = {
        "name": name,
        "queues": list(queues),
        "devices": {
            "gpus": gpus,
            "gpu_type": "NVIDIA H100 80GB HBM3" if gpus else "",
            "gpu_memory_bytes": 80 * 1024**3 if gpus else 0,
            "cpus": cpus,
        },
        "heartbeat_seconds": 10.0,
        "started_at": time.time() - 60,
        "time": time.time(),
        **extra,
    }
    return worker_heartbeat.run(message)


def training_job(team, *, devices: int = 1, nodes: int = 1, queue: str = "gpu") -> Job:
    """A queued pre-training job asking for devices x nodes, with its outbox row."""
    job = Job.objects.create(
        project=team.project,
        kind="pretrain",
        queue=queue,
        params={"resources": {"devices": devices, "nodes": nodes, "strategy": "ddp"}},
        created_by=team.engineer,
        dispatched_at=timezone.now(),
    )
    dispatch_enqueue(job)
    return job


def sent_ids(sent_jobs) -> list[int]:
    return [args[0]["job_id"] for name, args, _queue in sent_jobs if name == RUN_JOB_TASK]


def test_a_heartbeat_registers_the_worker_with_its_devices(team):
    beat("gpu@node-1", gpus=4, cpus=32)

    worker = Worker.objects.get()
    assert (worker.name, worker.queues, worker.gpus, worker.cpus) == ("gpu@node-1", ["gpu"], 4, 32)
    assert worker.gpu_type == "NVIDIA H100 80GB HBM3"
    assert worker.gpu_memory_bytes == 80 * 1024**3


def test_a_job_needing_more_gpus_than_any_worker_has_stays_queued_with_the_reason(
    team, api, client, sent_jobs
):
    beat("gpu@node-1", gpus=4)
    beat("gpu@node-2", gpus=2)
    job = training_job(team, devices=8)

    assert dispatch_outbox_send_due()["held"] == 1
    job.refresh_from_db()
    assert (job.state, job.held_for) == ("queued", "capacity")
    assert job.held_reason == "needs 8 GPUs; largest worker has 4"
    assert sent_ids(sent_jobs) == []  # never sent to run on fewer
    answer = api(team.engineer).get(f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/").json()
    assert (answer["held_for"], answer["held_reason"]) == ("capacity", job.held_reason)
    client.force_login(team.engineer)
    for page in (
        f"/projects/{team.project.pk}/jobs/",
        f"/projects/{team.project.pk}/jobs/{job.pk}/",
    ):
        assert "queued (needs 8 GPUs; largest worker has 4)" in client.get(page).content.decode()


def test_the_held_job_is_sent_when_a_capable_worker_appears(team, sent_jobs):
    beat("gpu@node-1", gpus=4)
    job = training_job(team, devices=8)
    dispatch_outbox_send_due()
    assert beat("gpu@node-1", gpus=4) == 0  # the same worker again: nothing new

    assert beat("gpu@big", gpus=8) == 1

    job.refresh_from_db()
    assert sent_ids(sent_jobs) == [job.pk]
    assert (job.held_for, job.held_reason) == ("", "")
    assert JobDispatch.objects.get(job=job).state == "sent"


def test_a_job_with_no_live_worker_says_so_and_one_process_jobs_go_as_before(team, sent_jobs):
    many = training_job(team, devices=2, queue="cpu")
    single = training_job(team, devices=1, queue="gpu")

    dispatch_outbox_send_due()

    many.refresh_from_db()
    assert many.held_reason == "needs 2 CPUs; no live worker on the cpu queue"
    # Any worker of its queue runs a one-process job; the broker keeps it till one comes.
    assert sent_ids(sent_jobs) == [single.pk]
    assert beat("cpu@laptop", cpus=2, queues=["cpu"]) == 1  # a CPU worker's CPUs count
    assert sent_ids(sent_jobs) == [single.pk, many.pk]


def test_a_multi_node_job_needs_that_many_capable_workers(team, sent_jobs):
    beat("gpu@node-1", gpus=4)
    beat("gpu@small", gpus=2)
    job = training_job(team, devices=4, nodes=2)

    dispatch_outbox_send_due()
    job.refresh_from_db()
    assert job.held_reason == (
        "needs 4 GPUs on each of 2 nodes; 1 live worker of the gpu queue has that many"
    )
    assert beat("gpu@node-2", gpus=4) == 1
    assert sent_ids(sent_jobs) == [job.pk, job.pk]  # one node task per machine (jobs/gang.py)


def test_stale_and_departed_workers_do_not_count(team, sent_jobs):
    beat("gpu@old", gpus=8)
    Worker.objects.filter(name="gpu@old").update(
        last_seen_at=timezone.now() - timedelta(seconds=31)  # 3 intervals of 10 s missed
    )
    beat("gpu@going", gpus=8)
    beat("gpu@going", gpus=8, leaving=True)
    job = training_job(team, devices=8)

    assert capacity_hold_reason(job) == "needs 8 GPUs; no live worker on the gpu queue"
    assert dispatch_outbox_send_due()["held"] == 1
    assert beat("gpu@old", gpus=8) == 1  # back from silence: capacity again
    assert sent_ids(sent_jobs) == [job.pk]


def test_a_held_job_is_not_reaped_as_lost_while_it_waits(team, settings, sent_jobs):
    from controlplane.jobs.services import jobs_reap_expired

    job = training_job(team, devices=8)
    dispatch_outbox_send_due()
    later = timezone.now() + timedelta(seconds=settings.JOB_QUEUE_TIMEOUT_SECONDS + 60)

    assert jobs_reap_expired(now=later) == []
    job.refresh_from_db()
    assert (job.attempt, job.held_for) == (1, "capacity")


def test_the_overview_counts_and_lists_jobs_held_for_capacity(team, sent_jobs):
    from controlplane.dashboard.selectors import job_figures, queued_jobs
    from controlplane.finops.overview_selectors import overview_scope

    job = training_job(team, devices=8)
    dispatch_outbox_send_due()
    scope = overview_scope(team.owner, team.project.organisation)

    (row,) = [r for r in queued_jobs(scope) if r["job"] == job.pk]
    assert (row["reason"], row["detail"]) == (
        "capacity",
        "needs 8 GPUs; no live worker on the gpu queue",
    )
    assert job_figures(scope, timezone.now()).queued_by_reason["capacity"] == 1


@pytest.mark.parametrize(
    "message, problem",
    [
        ({"name": "w"}, "missing"),
        ({"queues": "gpu"}, "queues"),
        ({"devices": {"gpus": -1, "gpu_type": "", "gpu_memory_bytes": 0, "cpus": 1}}, "gpus"),
    ],
)
def test_a_malformed_heartbeat_is_dropped(team, message, problem, caplog):
    good = {
        "name": "gpu@x",
        "queues": ["gpu"],
        "devices": {"gpus": 1, "gpu_type": "", "gpu_memory_bytes": 0, "cpus": 1},
        "heartbeat_seconds": 5.0,
        "started_at": time.time(),
        "time": time.time(),
    }
    bad = message if problem == "missing" else {**good, **message}
    assert worker_heartbeat.run(bad) == 0
    assert not Worker.objects.exists()
    assert problem in caplog.text


def test_a_live_gpu_worker_in_the_registry_sends_training_to_the_gpu_queue(team, settings):
    from controlplane.jobs import dispatch

    settings.TRAINING_QUEUE = "auto"
    beat("gpu@node-1", gpus=1)
    assert dispatch.training_queue() == "gpu"  # no broadcast to the workers needed


def test_workers_silent_for_a_week_leave_the_registry(team):
    beat("gpu@gone", gpus=8)
    Worker.objects.filter(name="gpu@gone").update(last_seen_at=timezone.now() - timedelta(days=8))
    beat("gpu@new", gpus=1)
    assert list(Worker.objects.values_list("name", flat=True)) == ["gpu@new"]
