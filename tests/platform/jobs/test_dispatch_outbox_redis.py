"""Issue 11, "a committed job answered with 500": the real API (gunicorn), real Celery
workers and a private Redis that this test stops and starts again.

With Redis down, `POST .../jobs/` answers 201 with the queued job; when Redis is back the
control worker's outbox sends it within seconds and the job runs to success. Before the
outbox the POST was a 500 and the job waited JOB_QUEUE_TIMEOUT_SECONDS (30 min).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.liveprocess import Process, get, gunicorn_command, http, process_env, wait_until
from tests.redisserver import PrivateRedis, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def stack(tmp_path):
    """gunicorn + control worker (with beat) + cpu worker, all on a private Redis."""
    redis = PrivateRedis(tmp_path / "redis").start()
    port = free_port()
    env = process_env(
        CELERY_BROKER_URL=redis.url,
        DISPATCH_OUTBOX_INTERVAL_SECONDS="1",
        DISPATCH_RETRY_MAX_SECONDS="2",
    )
    celery = [sys.executable, "-m", "celery", "--quiet", "-A"]
    control = ["controlplane.celery_app", "worker", "-Q", "control", "--pool", "solo", "-B"]
    cpu = ["workers.celery_app", "worker", "-Q", "cpu", "--pool", "solo"]
    processes = [
        Process("web", gunicorn_command(port), env, tmp_path),
        Process(
            "control",
            celery
            + control
            + ["-s", str(tmp_path / "beat"), "-n", f"control-{port}@test"]
            + ["-l", "INFO"],
            env,
            tmp_path,
        ),
        Process("cpu", celery + cpu + ["-n", f"cpu-{port}@test", "-l", "INFO"], env, tmp_path),
    ]

    class Stack:
        pass

    stack = Stack()
    stack.redis, stack.base = redis, f"http://127.0.0.1:{port}"
    stack.logs = lambda: "\n".join(p.tail() for p in processes)
    try:
        wait_until(lambda: get(stack.base + "/healthz") is not None, 60, stack.logs)
        for process in processes[1:]:
            wait_until(lambda p=process: "ready." in p.log.read_text(), 60, stack.logs)
        yield stack
    finally:
        for process in processes:
            process.stop()
        redis.stop()


def test_a_job_posted_while_redis_is_down_is_accepted_and_runs_when_it_returns(
    stack, team, make_upload
):
    from controlplane.accounts.services import api_token_create
    from controlplane.jobs.models import Job, JobDispatch

    upload = make_upload(team.project, team.engineer, b'{"text": "hi"}\n' * 100, "a.jsonl")
    _token, raw = api_token_create(user=team.engineer, name="outage")
    body = json.dumps({"kind": "inspect", "params": {"upload_id": upload.pk}}).encode()

    stack.redis.stop()
    start = time.monotonic()
    status, answer, _headers = http(
        "POST", f"{stack.base}/api/v1/projects/{team.project.pk}/jobs/", token=raw, body=body
    )
    seconds = time.monotonic() - start
    assert status == 201, answer
    job = Job.objects.get(pk=json.loads(answer)["id"])
    assert job.state == "queued" and seconds < 5, (seconds, stack.logs())
    dispatch = JobDispatch.objects.get(job=job)
    assert dispatch.state == "pending" and "Connection refused" in dispatch.last_error
    assert Job.objects.count() == 1

    time.sleep(3)  # the outage goes on; the outbox keeps backing off
    stack.redis.start()
    back = time.monotonic()
    wait_until(lambda: JobDispatch.objects.get(pk=dispatch.pk).state == "sent", 60, stack.logs)
    sent_after = time.monotonic() - back
    wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, 60, stack.logs)
    job.refresh_from_db()
    print(f"outbox: dispatched {sent_after:.1f}s after Redis returned; POST took {seconds:.2f}s")
    assert job.state == "succeeded" and job.attempt == 1, (job.error, stack.logs())
    assert sent_after < 20, stack.logs()

    # The web process's own broker connection recovered too: a new job is sent at once.
    status, answer, _headers = http(
        "POST", f"{stack.base}/api/v1/projects/{team.project.pk}/jobs/", token=raw, body=body
    )
    assert status == 201, answer
    second = Job.objects.get(pk=json.loads(answer)["id"])
    assert JobDispatch.objects.get(job=second).state == "sent", stack.logs()
    wait_until(lambda: Job.objects.get(pk=second.pk).state == "succeeded", 60, stack.logs)
