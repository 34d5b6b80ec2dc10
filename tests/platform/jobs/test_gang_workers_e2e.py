"""A two-node job on real processes: two `celery worker` processes meet through the platform.

A control worker (with the reaper's beat) and two cpu workers run against the test
database and the machine's Redis; the platform dispatches the attempt's two node tasks,
each worker takes one (workers prefetch one job: a worker never holds both nodes of a
gang, workers/celery_app.py), they join
on the control queue, read the rendezvous the platform publishes in the object store, and
train one tiny GPT together (torchrun, one gloo process per node, on loopback).
"""

from __future__ import annotations

import socket
import sys

import pytest
from django.conf import settings as django_settings

from tests.liveprocess import Process, process_env, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def broker():
    if not django_settings.CELERY["broker_url"].startswith("redis://"):
        pytest.skip("needs Redis (set CELERY_BROKER_URL)")
    import redis

    client = redis.Redis.from_url(django_settings.CELERY["broker_url"])
    client.flushdb()
    yield client
    client.flushdb()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _celery(app: str, queue: str, number: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        queue,
        "--pool",
        "solo",
        "-n",
        f"{queue}{number}-{_free_port()}@test",
        "--loglevel",
        "INFO",
        *extra,
    ]


def test_two_worker_processes_train_one_job_as_a_gang(
    team, make_token_version, broker, tmp_path, settings
):
    from django.db import transaction
    from django.utils import timezone

    from controlplane.jobs.gang import gang_nodes
    from controlplane.jobs.kinds import validate_job_request
    from controlplane.jobs.models import GangMember, Job
    from controlplane.jobs.services.lifecycle import dispatch_after_commit

    tokens = make_token_version(plays=2)[1]
    broker.flushdb()  # the data pipeline's own message, already run in this process
    settings.JOB_HEARTBEAT_SECONDS = 1
    params = {
        "dataset_version_id": tokens.pk,
        "preset": "tiny",
        "model": {"block_size": 32},
        "train": {"max_iters": 6, "batch_size": 2, "eval_interval": 0, "log_interval": 2},
        "checkpoint_interval": 3,
        "sample_tokens": 5,
    }
    request = validate_job_request(project=team.project, kind="pretrain", params=params)
    with transaction.atomic():  # as the platform stores a validated multi-node request
        job = Job.objects.create(
            project=team.project,
            kind="pretrain",
            queue="cpu",
            params={**request.params, "resources": {"nodes": 2, "devices": 1}},
            inputs=request.inputs,
            created_by=team.engineer,
            dispatched_at=timezone.now(),
        )
        dispatch_after_commit(job)
    assert gang_nodes(job) == 2

    env = process_env(
        JOB_HEARTBEAT_SECONDS="1",
        JOB_LEASE_SECONDS="20",
        REAPER_INTERVAL_SECONDS="2",
        WORKER_RENDEZVOUS_HOST="127.0.0.1",
        WORKER_RENDEZVOUS_PORT=str(_free_port()),
    )
    control = Process(
        "control",
        _celery("controlplane.celery_app", "control", 0, "-B", "-s", str(tmp_path / "beat")),
        env,
        tmp_path,
    )
    nodes = [
        Process(f"cpu{n}", _celery("workers.celery_app", "cpu", n), env, tmp_path) for n in (1, 2)
    ]
    processes = [control, *nodes]

    def logs() -> str:
        return "\n".join(process.tail() for process in processes)

    try:
        wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, 240, logs)
    finally:
        for process in processes:
            process.stop()
    job.refresh_from_db()
    assert job.state == "succeeded" and job.attempt == 1, job.error + logs()
    assert job.result["step"] == 6 and job.events.filter(type="started").count() == 1
    members = GangMember.objects.filter(job=job, attempt=1)
    assert sorted(m.member for m in members) == [0, 1]
    assert all(m.left_at and not m.error for m in members)
    # Each worker process ran one node of the gang.
    assert all("workers.run_job" in node.log.read_text() for node in nodes), logs()
