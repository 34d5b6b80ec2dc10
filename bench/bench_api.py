"""API latency under load: project list and job list with 1,000 projects and 10,000 jobs.

    .venv/bin/python bench/bench_api.py            # 10 s per endpoint
    .venv/bin/python bench/bench_api.py --quick    # 3 s per endpoint
    .venv/bin/python bench/bench_api.py --connections 8 --workers 2 --threads 1   # 8 users

What it does, all for real: creates a scratch PostgreSQL database, migrates it, seeds
1,000 projects (the benchmark user is a member of every one) and 10,000 jobs (half of
them in one busy project, the rest spread over the others), starts gunicorn the way
compose.yaml does (production settings), and drives each endpoint with `wrk` on
loopback. Prints p50/p95/p99 and requests/s per endpoint, and `/healthz` in the same
run as the floor of the stack (the ratio says how much the endpoint itself costs).

Also measures how long the web process takes from exec to its first answered request.
Goals: p95 under 50 ms on the API list endpoints and web start under 2 s (issue 2); the
job list and run pages under 150 ms p95 with 10,000 jobs and 1,000,000 metric points in
a project (issue 5); with 8 connections (8 users without think time, issue 11) every
page and endpoint under 150 ms p95, which 2 sync gunicorn workers hold on 2 cores and
threads do not improve. Non-2xx answers count as errors (a redirect to the login page too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB_NAME = "controlplane_bench"
N_PROJECTS, N_JOBS, BUSY_JOBS = 1000, 10_000, 5000

# The end of a seed script: the bench `user`'s API token (`raw`) and a logged-in `session`.
LOGIN = """
_, raw = api_token_create(user=user, name="bench")
from django.contrib.sessions.backends.db import SessionStore
session = SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.create()
"""

SEED = (
    """
import django
django.setup()
from django.contrib.auth.models import User
from controlplane.accounts.services import api_token_create
from controlplane.jobs.models import Job
from controlplane.orgs.models import OrgMembership
from controlplane.orgs.services import default_organisation
from controlplane.projects.models import Membership, Project

user = User.objects.create_user("bench", password="bench-password-1")
org = default_organisation()
OrgMembership.objects.create(organisation=org, user=user, role="admin")  # the org wall
projects = Project.objects.bulk_create(
    [Project(name=f"Project {{i:04d}}", slug=f"project-{{i:04d}}", organisation=org)
     for i in range({n_projects})])
Membership.objects.bulk_create([Membership(project=p, user=user, role="owner") for p in projects])
states = ["succeeded", "failed", "running", "queued", "cancelled"]
jobs = []
for i in range({n_jobs}):
    project = projects[0] if i < {busy_jobs} else projects[1 + i % (len(projects) - 1)]
    jobs.append(Job(project=project, kind="inspect", state=states[i % 5], created_by=user,
                    params={{"upload_id": i}}, result={{"line_count": i}} if i % 5 == 0 else None))
Job.objects.bulk_create(jobs, batch_size=2000)
# A job history spread over time (one job per minute), as a real project accumulates it.
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("UPDATE jobs_job SET created_at = now() - id * interval '1 minute'")
# A million metric points in the busy project: 10 runs x 2 curves x 50,000 steps.
with connection.cursor() as cursor:
    cursor.execute(
        "INSERT INTO jobs_jobmetric (job_id, key, step, value, recorded_at) "
        "SELECT j.id, k.key, s, 5.0 / (1 + s / 1000.0), now() "
        "FROM (SELECT id FROM jobs_job WHERE project_id = %s ORDER BY id DESC LIMIT 10) j "
        "CROSS JOIN (VALUES ('train/loss'), ('val/loss')) k(key) "
        "CROSS JOIN generate_series(1, {steps}) s", [projects[0].pk])
run = Job.objects.filter(project=projects[0]).order_by("-id").first()
# A pre-training run as the worker leaves it: 7 curves over 5,000 steps, 10 checkpoints,
# samples, a model's artifacts and its event log.
from django.utils import timezone
from controlplane.jobs.models import JobArtifact, JobEventRecord, JobMetric
now = timezone.now()
pretrain = Job.objects.create(
    project=projects[0], kind="pretrain", state="succeeded", created_by=user, finished_at=now,
    params={{"preset": "tiny", "train": {{"max_iters": 5000}}}},
    result={{"samples": [{{"prompt": "ROMEO:", "text": "To be, or not to be " * 10}}] * 3,
            "final": {{"val_loss": 1.52, "train_loss": 1.41}}}})
keys = ["train/loss", "train/lr", "train/tokens_per_second", "train/grad_norm", "train/mfu"]
JobMetric.objects.bulk_create(
    [JobMetric(job=pretrain, key=k, step=s, value=1.0 + 1.0 / (1 + s), recorded_at=now)
     for s in range(0, 5001, 10) for k in keys]
    + [JobMetric(job=pretrain, key=k, step=s, value=2.0 / (1 + s), recorded_at=now)
       for s in range(0, 5001, 250) for k in ("val/loss", "val/perplexity")])
JobArtifact.objects.bulk_create(
    [JobArtifact(job=pretrain, kind="checkpoint", name=f"checkpoint-{{s}}", step=s,
                 object_key=f"projects/{{projects[0].pk}}/jobs/{{pretrain.pk}}/ckpt-{{s}}.tar",
                 sha256="0" * 64, size=4_000_000) for s in range(500, 5001, 500)]
    + [JobArtifact(job=pretrain, name=f"model/{{n}}", sha256="0" * 64, size=1000,
                   object_key=f"projects/{{projects[0].pk}}/jobs/{{pretrain.pk}}/model/{{n}}")
       for n in ("model.safetensors", "config.json", "tokenizer.json", "samples.json")])
JobEventRecord.objects.bulk_create(
    JobEventRecord(job=pretrain, attempt=1, seq=i, type="metric" if i % 2 else "progress",
                   payload={{"step": i * 5}}, emitted_at=now) for i in range(1000))
"""
    + LOGIN
    + """print(projects[0].pk, run.pk, pretrain.pk, session.session_key, raw)
"""
)
METRIC_STEPS = 50_000

WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.3f %.3f %.3f %d\\n", summary.requests,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, summary.errors.status + summary.errors.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def psql(sql: str) -> None:
    subprocess.run(["psql", f"{PG}/postgres", "-q", "-c", sql], check=True, capture_output=True)


def make_env(data_dir: Path, db_name: str = DB_NAME, **extra: str) -> dict[str, str]:
    """Production settings on a scratch database: what every web benchmark runs under."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBJECT_STORE_")}
    env.update(
        PYTHONPATH=f"{ROOT / 'platform'}:{ROOT}",
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DATABASE_URL=f"{PG}/{db_name}",
        CONTROLPLANE_DATA_DIR=str(data_dir),
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 60,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        API_THROTTLE_USER="1000000/min",
        **extra,
    )
    return env


def prepare_database(env: dict[str, str], db_name: str) -> None:
    """A fresh scratch database `db_name` (the one `env` names), migrated, and the static
    files collected, as a deploy does."""
    psql(f"DROP DATABASE IF EXISTS {db_name}")
    psql(f"CREATE DATABASE {db_name}")
    for command in (["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True)


def vacuum_analyze(db_name: str) -> None:
    """Fresh planner statistics after seeding, as a long-lived database has."""
    subprocess.run(["psql", f"{PG}/{db_name}", "-q", "-c", "VACUUM ANALYZE"], check=True)


def seed_database(env: dict[str, str], db_name: str, code: str) -> tuple[list[str], float]:
    """Run a seed script, then VACUUM ANALYZE: the words it printed, and the seconds taken."""
    started = time.perf_counter()
    out = run_python(env, code)
    vacuum_analyze(db_name)
    return out, time.perf_counter() - started


def run_python(env: dict[str, str], code: str, *args: str) -> list[str]:
    """Run `code` in a fresh interpreter under `env`; the words it printed."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()


class PeakSampler(threading.Thread):
    """The peak of `read()` (e.g. a process's RSS), sampled every `interval` seconds from
    construction until `stop()`, which returns it."""

    def __init__(self, read: Callable[[], float], interval: float):
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self.first = self.peak = read()
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def start_gunicorn(
    env: dict[str, str], port: int, workers: int = 2, threads: int = 1
) -> tuple[subprocess.Popen, float]:
    """Start gunicorn and return it with the seconds until /healthz first answered."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:controlplane.gunicorn_conf",
            "controlplane.wsgi",
        ],
        cwd=ROOT,
        env={
            **env,
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
            "GUNICORN_ACCESS_LOG": "/dev/null",
            "GUNICORN_LOG_LEVEL": "warning",
        },
    )
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return proc, time.perf_counter() - started
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("gunicorn exited; see its output above") from None
            time.sleep(0.02)


def wrk(url: str, header: str | None, seconds: int, connections: int, script: Path) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    if header:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    requests, p50, p95, p99, errors = line.split()[1:]
    return {
        "rps": int(requests) / seconds,
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "errors": int(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per endpoint instead of 10")
    # Two connections for two sync workers: each request is measured, not the queue before it.
    parser.add_argument(
        "--connections", type=int, default=2, help="concurrent connections (default 2)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per worker; >1 is gthread (default 1)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    seconds = 3 if args.quick else 10

    data_dir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    env = make_env(data_dir)
    proc = None
    try:
        prepare_database(env, DB_NAME)
        seed = SEED.format(
            n_projects=N_PROJECTS, n_jobs=N_JOBS, busy_jobs=BUSY_JOBS, steps=METRIC_STEPS
        )
        out, seconds = seed_database(env, DB_NAME, seed)
        busy_project, run_id, pretrain_id, session_key, token = out[-5:]
        print(
            f"seeded {N_PROJECTS} projects, {N_JOBS} jobs, {20 * METRIC_STEPS:,} metric points "
            f"in {seconds:.1f}s"
        )

        port = free_port()
        proc, start_s = start_gunicorn(env, port, args.workers, args.threads)
        print(
            f"web start (exec to first /healthz answer, gunicorn --preload, {args.workers} workers"
            f" x {args.threads} threads): {start_s:.2f}s "
            f"(goal < 2 s)"
        )

        script = data_dir / "report.lua"
        script.write_text(WRK_SCRIPT)
        base = f"http://127.0.0.1:{port}"
        bearer, cookie = f"Authorization: Bearer {token}", f"Cookie: sessionid={session_key}"
        jobs_url = f"{base}/api/v1/projects/{busy_project}/jobs/"
        # name: (url, header, goal for p95 in ms)
        endpoints = {
            "healthz (floor)": (f"{base}/healthz", None, None),
            "API project list": (f"{base}/api/v1/projects/", bearer, 50),
            "API job list (5,000 jobs)": (jobs_url, bearer, 50),
            "API job list, state filter": (f"{jobs_url}?state=failed", bearer, 50),
            "page: job list": (f"{base}/projects/{busy_project}/jobs/", cookie, 150),
            "page: run (100k points)": (
                f"{base}/projects/{busy_project}/jobs/{run_id}/",
                cookie,
                150,
            ),
            "page: pre-training run": (
                f"{base}/projects/{busy_project}/jobs/{pretrain_id}/",
                cookie,
                150,
            ),
        }
        print(f"wrk, {args.connections} connections, {seconds}s each, page size 50")
        print(f"{'endpoint':32} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  p95/floor")
        floor = None
        missed = [] if start_s < 2 else ["web start"]
        for name, (url, header, goal) in endpoints.items():
            wrk(url, header, 1, args.connections, script)  # warm connections and caches
            r = wrk(url, header, seconds, args.connections, script)
            floor = floor or r["p95"]
            if goal and (r["p95"] >= goal or r["errors"]):
                missed.append(name)
            errors = f"  ERRORS {r['errors']}" if r["errors"] else ""
            target = f"  (goal < {goal} ms)" if goal else ""
            print(
                f"{name:32} {r['rps']:8.0f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f}"
                f"  {r['p95'] / floor:6.1f}x{errors}{target}"
            )
        print("all goals met" if not missed else f"MISSED: {', '.join(missed)}")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
