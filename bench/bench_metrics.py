"""What one Prometheus scrape of /metrics costs, with many jobs and events in the database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/controlplane \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/bench_metrics.py --jobs 10000 --events 50000

Builds a scratch test database beside DATABASE_URL's (test_<name>, dropped at the end),
fills it with jobs (500 queued, held for quota or running with heartbeats, 1,000 ended
within the hour, the rest history) and job events applied over the last ten minutes,
then times GET /metrics through the whole Django stack, broker read included. Run it at
two sizes to see the cost stay flat: every query is indexed or bounded (selectors.py).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")


LIVE_JOBS = 500
RECENT_JOBS = 1_000


def fill(jobs: int, events: int) -> None:
    from django.contrib.auth.models import User
    from django.utils import timezone

    from controlplane.jobs.models import Job, JobEventRecord
    from controlplane.projects.services import project_create
    from controlplane.serving.models import ServeNode
    from workers.protocol import JobKind

    rng = random.Random(0)
    user = User.objects.create_user("bench", "bench@example.org", "pw-bench-1")
    projects = [project_create(name=f"P{i}", slug=f"p{i}", actor=user) for i in range(10)]
    now = timezone.now()
    kinds = [kind.value for kind in JobKind]
    rows = []
    for n in range(jobs):
        # What a scrape reads is the same at every size: 500 live jobs (queued, a third
        # held for quota, or running) and 1,000 that ended within the hour; the rest is
        # history over 90 days, which the scrape must not pay for.
        if n < LIVE_JOBS:
            state = "queued" if n % 2 else "running"
        else:
            state = rng.choices(["succeeded", "failed", "cancelled"], [90, 7, 3])[0]
        job = Job(
            project=rng.choice(projects),
            kind=rng.choice(kinds),
            queue=rng.choice(["cpu", "gpu"]),
            state=state,
            created_by=user,
        )
        if state in ("succeeded", "failed", "cancelled"):
            recent = n < LIVE_JOBS + RECENT_JOBS
            ago = rng.uniform(0, 3600) if recent else rng.uniform(3600, 90 * 86400)
            job.finished_at = now - timedelta(seconds=ago)
            job.started_at = job.finished_at - timedelta(seconds=rng.uniform(5, 20000))
        elif state == "running":
            job.started_at = now - timedelta(minutes=30)
            job.worker = f"celery@worker-{n % 20}"
            job.last_heartbeat_at = now - timedelta(seconds=rng.uniform(0, 60))
        elif n % 3 == 0:
            job.held_for = "quota"
        rows.append(job)
    Job.objects.bulk_create(rows, batch_size=2000)
    running = list(Job.objects.filter(state="running").values_list("id", flat=True)[:50])
    records = [
        JobEventRecord(
            job_id=running[n % len(running)],
            attempt=1,
            seq=n,
            type="metric",
            emitted_at=now - timedelta(seconds=rng.uniform(0, 600)),
        )
        for n in range(events)
    ]
    JobEventRecord.objects.bulk_create(records, batch_size=5000)
    for n in range(5):
        ServeNode.objects.create(name=f"node-{n}", url="http://n", last_seen=now)


def time_scrapes(count: int) -> list[float]:
    from django.test import Client

    client = Client()
    timings = []
    sources: dict[str, list[float]] = {}
    for _ in range(count):
        start = time.perf_counter()
        response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
        timings.append(time.perf_counter() - start)
        assert response.status_code == 200, response.content
        assert b'controlplane_metrics_source_up{source="database"} 1.0' in response.content
        for line in response.content.decode().splitlines():
            if line.startswith("controlplane_metrics_source_seconds{"):
                source = line.split('"')[1]
                sources.setdefault(source, []).append(float(line.rsplit(" ", 1)[1]))
    for source, seconds in sorted(sources.items()):
        print(f"  {source}: median {statistics.median(seconds) * 1000:.1f} ms")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--scrapes", type=int, default=30)
    args = parser.parse_args()

    import django
    from django.db import connection
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        start = time.perf_counter()
        fill(args.jobs, args.events)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # what autovacuum does to a live database
                cursor.execute("ANALYZE")
        print(
            f"filled {args.jobs} jobs, {args.events} events in {time.perf_counter() - start:.1f} s"
        )
        time_scrapes(3)  # warm: connections, imports
        timings = sorted(time_scrapes(args.scrapes))
        p95 = timings[max(0, round(0.95 * len(timings)) - 1)]
        print(
            f"GET /metrics over {args.scrapes} scrapes: p50 {statistics.median(timings) * 1000:.1f} ms,"
            f" p95 {p95 * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
