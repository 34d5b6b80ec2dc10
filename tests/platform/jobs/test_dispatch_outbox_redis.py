"""Issue 11, "a committed job answered with 500": the real API (gunicorn), real Celery
workers and a private Redis that this test stops and starts again.

With Redis down, `POST .../jobs/` answers 201 with the queued job; when Redis is back the
control worker's outbox sends it within seconds and the job runs to success. Before the
outbox the POST was a 500 and the job waited JOB_QUEUE_TIMEOUT_SECONDS (30 min).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from tests.redisserver import PrivateRedis, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    return (
        f"postgres://{db.get('USER') or 'postgres'}@{db.get('HOST') or '127.0.0.1'}:"
        f"{db.get('PORT') or '5432'}/{db['NAME']}"
    )


class Process:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], folder: Path):
        self.log = folder / f"{name}.log"
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def tail(self) -> str:
        return f"--- {self.log.name}\n" + self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def stack(tmp_path):
    """gunicorn + control worker (with beat) + cpu worker, all on a private Redis."""
    redis = PrivateRedis(tmp_path / "redis").start()
    web_port = free_port()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DATABASE_URL=_database_url(),
        CELERY_BROKER_URL=redis.url,
        DISPATCH_OUTBOX_INTERVAL_SECONDS="1",
        DISPATCH_RETRY_MAX_SECONDS="2",
        GUNICORN_BIND=f"127.0.0.1:{web_port}",
        GUNICORN_WORKERS="1",
    )
    celery = [sys.executable, "-m", "celery", "--quiet", "-A"]
    processes = [
        Process(
            "web",
            [sys.executable, "-m", "gunicorn", "-c", "python:controlplane.gunicorn_conf"]
            + ["controlplane.wsgi"],
            env,
            tmp_path,
        ),
        Process(
            "control",
            celery
            + ["controlplane.celery_app", "worker", "-Q", "control", "--pool", "solo", "-B"]
            + ["-s", str(tmp_path / "beat"), "-n", f"control-{web_port}@test", "-l", "INFO"],
            env,
            tmp_path,
        ),
        Process(
            "cpu",
            celery
            + ["workers.celery_app", "worker", "-Q", "cpu", "--pool", "solo"]
            + ["-n", f"cpu-{web_port}@test", "-l", "INFO"],
            env,
            tmp_path,
        ),
    ]

    class Stack:
        pass

    stack = Stack()
    stack.redis, stack.processes, stack.base = redis, processes, f"http://127.0.0.1:{web_port}"
    stack.logs = lambda: "\n".join(p.tail() for p in processes)
    try:
        _wait_until(lambda: _get(stack.base + "/healthz") is not None, 60, stack.logs)
        for process in processes[1:]:
            _wait_until(lambda p=process: "ready." in p.log.read_text(), 60, stack.logs)
        yield stack
    finally:
        for process in processes:
            process.stop()
        redis.stop()


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read()
    except OSError:
        return None


def _wait_until(predicate, timeout: float, logs) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"gave up after {timeout}s\n{logs()}")


def _post_job(base: str, token: str, project_id: int, upload_id: int) -> tuple[int, dict, float]:
    request = urllib.request.Request(
        f"{base}/api/v1/projects/{project_id}/jobs/",
        data=json.dumps({"kind": "inspect", "params": {"upload_id": upload_id}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, body = error.code, {"raw": error.read()[:2000].decode(errors="replace")}
    return status, body, time.monotonic() - start


def test_a_job_posted_while_redis_is_down_is_accepted_and_runs_when_it_returns(
    stack, team, make_upload
):
    from controlplane.accounts.services import api_token_create
    from controlplane.jobs.models import Job, JobDispatch

    upload = make_upload(team.project, team.engineer, b'{"text": "hi"}\n' * 100, "a.jsonl")
    _token, raw = api_token_create(user=team.engineer, name="outage")

    stack.redis.stop()
    status, body, seconds = _post_job(stack.base, raw, team.project.pk, upload.pk)
    assert status == 201, body
    assert body["state"] == "queued" and seconds < 5, (seconds, stack.logs())
    job = Job.objects.get(pk=body["id"])
    dispatch = JobDispatch.objects.get(job=job)
    assert dispatch.state == "pending" and "Connection refused" in dispatch.last_error
    assert Job.objects.count() == 1  # a single job, no half-written retry

    time.sleep(3)  # the outage goes on; the outbox keeps backing off
    stack.redis.start()
    back = time.monotonic()
    _wait_until(lambda: JobDispatch.objects.get(pk=dispatch.pk).state == "sent", 60, stack.logs)
    sent_after = time.monotonic() - back
    _wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, 60, stack.logs)
    job.refresh_from_db()
    print(f"outbox: dispatched {sent_after:.1f}s after Redis returned; POST took {seconds:.2f}s")
    assert job.state == "succeeded" and job.attempt == 1, (job.error, stack.logs())
    assert sent_after < 20, stack.logs()
