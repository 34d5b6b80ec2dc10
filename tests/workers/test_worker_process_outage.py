"""A real `celery worker` process (prefork, the compose default) runs a job through a 20 s
outage of its broker.

The worker, its broker (a private redis-server) and the object store (a local folder)
belong to this test alone. The broker is stopped while the job runs and started again;
afterwards the `control` queue must hold every event of the attempt exactly once, in
order, ending with `finished`.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from tests.redisserver import PrivateRedis
from tests.workers.test_broker_outage import _control_queue
from workers.protocol import RUN_JOB_TASK

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _worker(redis_url: str, tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "CELERY_BROKER_URL": redis_url,
            "CONTROLPLANE_DATA_DIR": str(tmp_path / "data"),
            "OBJECT_STORE_ROOT": str(tmp_path / "objects"),
            "MLFLOW_TRACKING_URI": "off",
        }
    )
    env.pop("OBJECT_STORE_ENDPOINT", None)
    # pytest-django sets it; with it Celery's Django fixup would load the platform.
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = (tmp_path / "worker.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "cpu"]
        + [
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "-n",
            f"outage-{os.getpid()}@test",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} after {timeout} s\n{log.read_text()[-4000:]}")


def test_a_worker_process_keeps_its_job_through_a_broker_outage(tmp_path, monkeypatch):
    from workers.storage import LocalObjectStore

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery would prefer it
    server = PrivateRedis(tmp_path / "redis", persistent=True)
    server.start()
    store = LocalObjectStore(
        tmp_path / "objects", "controlplane", public_base_url="http://x", signing_key="k"
    )
    store.ensure_bucket()
    data = b"0123456789" * 300_000  # 3 MB read at 0.1 MB/s: ~30 s of work
    stored = store.put_bytes("projects/1/uploads/big", data)
    spec = {
        "job_id": 77,
        "kind": "inspect",
        "project_id": 1,
        "attempt": 1,
        "inputs": [{"uri": stored.key, "sha256": stored.sha256, "size": stored.size}],
        "params": {"read_rate_limit_mb_s": 0.1, "preview_records": 5},
        "output_prefix": "projects/1/jobs/77/attempt-1/",
        "heartbeat_seconds": 1,
    }
    worker = _worker(server.url, tmp_path)
    log = tmp_path / "worker.log"
    try:
        app = Celery("outage-sender")
        app.conf.update(broker_url=server.url, task_serializer="json", accept_content=["json"])
        app.send_task(RUN_JOB_TASK, args=[spec], queue="cpu")
        _wait_for(lambda: len(_control_queue(server)) >= 3, 60, "the job did not start", log)
        server.stop()
        time.sleep(20)
        server.start()
        _wait_for(
            lambda: any(e["type"] == "finished" for e in _control_queue(server)),
            90,
            "no finished event",
            log,
        )
        events = _control_queue(server)
        seqs = [event["seq"] for event in events]
        assert seqs == list(range(len(seqs)))
        assert events[-1]["type"] == "finished"
        assert events[-1]["payload"]["result"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert sum(e["type"] == "heartbeat" for e in events) >= 20
        assert "broker unavailable" in log.read_text()  # the outage did hit the sender
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        server.stop()
