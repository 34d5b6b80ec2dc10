"""The whole job path with real processes: web -> Redis -> celery workers -> control queue -> DB.

A cpu worker and a control worker (with the reaper's beat) run as `celery worker`
processes against the test database and the machine's Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT)])
    env["DATABASE_URL"] = _test_database_url()
    env["JOB_LEASE_SECONDS"] = "4"
    env["JOB_HEARTBEAT_SECONDS"] = "1"
    env["REAPER_INTERVAL_SECONDS"] = "1"
    env["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    return env


def _test_database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("end-to-end worker tests need PostgreSQL (set DATABASE_URL)")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or "5432"
    user = db.get("USER") or "postgres"
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


class Worker:
    def __init__(self, app: str, queue: str, tmp_path: Path, *extra: str):
        self.log = tmp_path / f"{queue}-{time.monotonic_ns()}.log"
        command = [
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
            f"{queue}-{os.getpid()}-{time.monotonic_ns()}@test",
            "--loglevel",
            "INFO",
            *extra,
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_env(),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def broker():
    if not settings.CELERY["broker_url"].startswith("redis://"):
        pytest.skip("end-to-end worker tests need Redis (set CELERY_BROKER_URL)")
    import redis

    client = redis.Redis.from_url(settings.CELERY["broker_url"])
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def workers(broker, tmp_path, settings):
    settings.JOB_HEARTBEAT_SECONDS = 1
    settings.JOB_LEASE_SECONDS = 4
    started: list[Worker] = []

    def start(kind: str) -> Worker:
        if kind == "control":
            worker = Worker(
                "controlplane.celery_app", "control", tmp_path, "-B", "-s", str(tmp_path / "beat")
            )
        else:
            worker = Worker("workers.celery_app", "cpu", tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def _wait(job, predicate, timeout: float, workers_logs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if predicate(job):
            return
        time.sleep(0.2)
    logs = "\n".join(path.read_text()[-3000:] for path in workers_logs)
    raise AssertionError(
        f"job {job.pk} is {job.state} (attempt {job.attempt}) after {timeout}s\n{logs}"
    )


def test_inspect_job_runs_on_a_real_worker(team, api, workers, make_upload):
    control, cpu = workers("control"), workers("cpu")
    data = b"".join(b'{"text": "line %d", "n": %d}\n' % (i, i) for i in range(1000))
    upload = make_upload(team.project, team.engineer, data, filename="records.jsonl")
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "inspect", "params": {"upload_id": upload.pk}},
        format="json",
    )
    assert response.status_code == 201
    from controlplane.jobs.models import Job

    job = Job.objects.get(pk=response.json()["id"])
    _wait(job, lambda j: j.is_terminal, 60, [control.log, cpu.log])
    assert job.state == "succeeded", job.error
    assert job.result["format"] == "jsonl" and job.result["line_count"] == 1000
    assert job.result["sha256"] == upload.sha256 and job.result["records"][0]["text"] == "line 0"
    assert job.artifacts.get().name == "inspection.json"
    page = api(team.viewer).get(f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/").json()
    assert page["state"] == "succeeded" and page["result"]["line_count"] == 1000


def test_killed_worker_job_is_redispatched_and_finishes_once(team, workers, make_upload):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job, JobEventRecord
    from controlplane.jobs.services import job_create

    control, cpu = workers("control"), workers("cpu")
    data = b"abcdefghij" * 40_000 + b"\n"  # 400 kB read at 100 kB/s: ~4 s of work
    upload = make_upload(team.project, team.engineer, data)
    job = job_create(
        project=team.project,
        kind="inspect",
        actor=team.engineer,
        params={"upload_id": upload.pk, "read_rate_limit_mb_s": 0.1},
    )
    _wait(job, lambda j: j.state == "running", 60, [control.log, cpu.log])
    time.sleep(1.0)
    cpu.kill()  # SIGKILL mid-job: no goodbye, no failed event

    replacement = workers("cpu")
    _wait(job, lambda j: j.is_terminal, 90, [control.log, replacement.log])
    assert job.state == "succeeded" and job.attempt == 2, job.error
    finished = JobEventRecord.objects.filter(job=job, type="finished")
    assert finished.count() == 1 and finished.get().attempt == 2
    seqs = list(JobEventRecord.objects.filter(job=job).values_list("attempt", "seq"))
    assert len(seqs) == len(set(seqs))
    actions = list(
        AuditEvent.objects.filter(artifact_type="job", artifact_id=str(job.pk)).values_list(
            "action", flat=True
        )
    )
    assert actions.count("job.succeeded") == 1 and "job.redispatched" in actions
    assert Job.objects.get(pk=job.pk).result["sha256"] == upload.sha256


def test_running_job_is_cancelled_cooperatively(team, workers, make_upload):
    from controlplane.jobs.services import job_cancel, job_create

    control, cpu = workers("control"), workers("cpu")
    upload = make_upload(team.project, team.engineer, b"x" * 2_000_000)
    job = job_create(
        project=team.project,
        kind="inspect",
        actor=team.engineer,
        params={"upload_id": upload.pk, "read_rate_limit_mb_s": 0.05},
    )
    _wait(job, lambda j: j.state == "running", 60, [control.log, cpu.log])
    job_cancel(job=job, actor=team.engineer)
    _wait(job, lambda j: j.is_terminal, 30, [control.log, cpu.log])
    assert job.state == "cancelled"


def test_killed_training_resumes_from_its_last_checkpoint(
    team, workers, make_ready_version, run_on_worker, settings
):
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.models import JobMetric
    from controlplane.jobs.services import job_create
    from engine.data.corpora import shakespeare_files

    settings.TRAINING_QUEUE = "cpu"
    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    files = {p.name: p.read_bytes() for p in shakespeare_files("modern")[:3]}
    raw = make_ready_version(dataset, team.engineer, files)
    pipeline = run_on_worker(
        job_create(
            project=team.project,
            kind="data_pipeline",
            actor=team.engineer,
            params={"dataset_version_id": raw.pk, "val_fraction": 0.34},
        )
    )
    tokens = pipeline.produced_versions.get()
    control, cpu = workers("control"), workers("cpu")
    job = job_create(
        project=team.project,
        kind="pretrain",
        actor=team.engineer,
        params={
            "dataset_version_id": tokens.pk,
            "preset": "tiny",
            "model": {"block_size": 32},
            "train": {
                "max_iters": 160,
                "batch_size": 4,
                "eval_interval": 80,
                "eval_iters": 2,
                "log_interval": 10,
            },
            "device": "cpu",
            "checkpoint_interval": 20,
            "sample_tokens": 10,
        },
    )
    _wait(
        job, lambda j: j.artifacts.filter(kind="checkpoint").exists(), 120, [control.log, cpu.log]
    )
    cpu.kill()  # mid-training, after at least one checkpoint reached the store

    replacement = workers("cpu")
    _wait(job, lambda j: j.is_terminal, 180, [control.log, replacement.log])
    assert job.state == "succeeded" and job.attempt == 2, job.error
    assert job.resume_checkpoint and job.result["step"] == 160
    steps = list(JobMetric.objects.filter(job=job, key="train/loss").values_list("step", flat=True))
    assert sorted(steps) == list(range(10, 161, 10))  # every step once, none twice
