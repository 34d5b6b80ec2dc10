"""The organisation overview at scale: the page and its API under a realistic history.

    .venv/bin/python bench/bench_overview.py           # 100 projects, 100,000 attempts, 2 years
    .venv/bin/python bench/bench_overview.py --quick   # a tenth of the attempts, 90 days

Everything real, in this process: a scratch PostgreSQL database (migrated), production
settings (DEBUG off), Django's test client through the whole middleware stack.

Seeded with bulk_create: one organisation, 100 projects, 90,000 jobs of which 10,000 were
resumed once (100,000 job attempts with usage and cost) spread over two years, a few
hundred running (some with idle GPUs) and queued (held by quota, waiting dispatch, sent
without a worker), metrics for the last month's jobs, daily storage snapshots of 5 kinds
per project for two years (365,000 rows), budgets, models behind @production, open
violations and data-subject requests.

Timed: GET / (the overview, logged in as an org admin who sees all 100 projects; also with
the storage figures' cache emptied before each request, as right after a new snapshot)
and GET /api/v1/orgs/<slug>/usage/ and /cost/, ~50 requests each after a warm-up; p50 and
p95, and the queries a request makes. Goal (issue 18): p95 under 200 ms. The cache is the
process's own (CACHE_URL defaults to locmem://), as a single web process has.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT), str(ROOT / "bench")]

from bench_api import PG, psql, vacuum_analyze  # noqa: E402

DB_NAME = "controlplane_bench_overview"
GOAL_MS = 200.0
INFORMATIONAL = {"overview page, storage cache cold"}
N_PROJECTS = 100
KINDS = ["pretrain", "finetune", "dpo", "evaluate", "data_pipeline", "inspect"]
STORAGE_KINDS = ["raw", "derived", "checkpoints", "models", "archive"]
BATCH = 5000


def setup_django(data_dir: Path) -> None:
    for name in [key for key in os.environ if key.startswith("OBJECT_STORE_")]:
        del os.environ[name]
    os.environ.update(
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DATABASE_URL=f"{PG}/{DB_NAME}",
        CONTROLPLANE_DATA_DIR=str(data_dir),
        OBJECT_STORE_ROOT=str(data_dir / "objects"),
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 60,
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # the page's manifest


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


# -- seeding -----------------------------------------------------------------------------


def seed(n_attempts: int, days: int) -> tuple:
    from django.contrib.auth.models import User

    from controlplane.orgs.models import Organisation, OrgMembership, OrgRole
    from controlplane.projects.models import Membership, Project, Role

    rng = random.Random(18)
    now = dt.datetime.now(dt.UTC)
    admin = User.objects.create_user("cfo", "cfo@example.org", "pw")
    owner = User.objects.create_user("owner", "owner@example.org", "pw")
    org = Organisation.objects.create(name="Bench org", slug="bench", created_by=owner)
    OrgMembership.objects.bulk_create(
        [
            OrgMembership(organisation=org, user=admin, role=OrgRole.ADMIN),
            OrgMembership(organisation=org, user=owner, role=OrgRole.MEMBER),
        ]
    )
    projects = Project.objects.bulk_create(
        Project(organisation=org, name=f"Project {i:03d}", slug=f"p{i:03d}", created_by=owner)
        for i in range(N_PROJECTS)
    )
    Membership.objects.bulk_create(
        Membership(project=p, user=owner, role=Role.OWNER) for p in projects
    )
    jobs = seed_jobs(rng, projects, owner, n_attempts, days, now)
    seed_storage(projects, days, now)
    seed_governance(rng, projects, owner, jobs, now)
    return org, admin


def seed_jobs(rng, projects, owner, n_attempts: int, days: int, now) -> list:  # noqa: C901
    from controlplane.finops.models import Budget, JobAttemptUsage
    from controlplane.jobs.models import Job, JobDispatch, JobMetric

    resumed = n_attempts // 10
    n_jobs = n_attempts - resumed
    started = [now - dt.timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(n_jobs)]
    started.sort()
    jobs = []
    for index, start in enumerate(started):
        recent = index >= n_jobs - 600
        state = rng.choice(["running", "queued"]) if recent and index % 2 else None
        state = state or rng.choices(["succeeded", "failed", "cancelled"], [85, 12, 3])[0]
        kind = rng.choice(KINDS)
        jobs.append(
            Job(
                project=rng.choice(projects),
                kind=kind,
                queue="gpu" if kind in ("pretrain", "finetune", "dpo") else "cpu",
                state=state,
                created_by=owner,
                started_at=None if state == "queued" else start,
                finished_at=start + dt.timedelta(minutes=rng.uniform(1, 300))
                if state in ("succeeded", "failed", "cancelled")
                else None,
                held_for="quota" if state == "queued" and index % 3 == 0 else "",
                attempt=1,
            )
        )
    jobs = Job.objects.bulk_create(jobs, batch_size=BATCH)
    for job, start in zip(jobs, started, strict=True):
        job.created_at_hint = start
    twice = set(rng.sample(range(n_jobs), resumed))
    usage = []
    for index, job in enumerate(jobs):
        if job.state == "queued":
            continue
        attempts = 2 if index in twice else 1
        for attempt in range(1, attempts + 1):
            gpu = job.queue == "gpu"
            seconds = rng.uniform(60, 4 * 3600)
            usage.append(
                JobAttemptUsage(
                    job=job,
                    attempt=attempt,
                    project_id=job.project_id,
                    kind=job.kind,
                    queue=job.queue,
                    started_at=job.created_at_hint + dt.timedelta(minutes=attempt - 1),
                    updated_at=job.created_at_hint,
                    final=job.state != "running",
                    wall_seconds=seconds,
                    cpu_seconds=seconds * rng.uniform(0.5, 4),
                    device_type="NVIDIA H100" if gpu else "cpu",
                    device_count=rng.choice([1, 2, 4, 8]) if gpu else 0,
                    gpu_seconds=seconds if gpu else 0.0,
                    gpu_util_mean=rng.uniform(5, 99) if gpu else None,
                    idle_since=now - dt.timedelta(minutes=40)
                    if job.state == "running" and gpu and index % 5 == 0
                    else None,
                    cost=Decimal(f"{rng.uniform(0.01, 40):.6f}"),
                )
            )
    for index in range(0, len(usage), BATCH):
        JobAttemptUsage.objects.bulk_create(usage[index : index + BATCH])
    # Running jobs are on their last attempt; resumed jobs' jobs.attempt says 2.
    Job.objects.filter(pk__in=[jobs[i].pk for i in twice]).update(attempt=2)
    JobDispatch.objects.bulk_create(
        JobDispatch(
            job=job,
            attempt=1,
            state="sent" if i % 2 else "pending",
            next_attempt_at=now,
        )
        for i, job in enumerate(jobs)
        if job.state == "queued" and not job.held_for
    )
    since = now - dt.timedelta(days=30)
    metrics = [
        JobMetric(
            job=job,
            key="train/loss",
            step=step,
            value=1.0,
            recorded_at=job.created_at_hint + dt.timedelta(seconds=30 + step * 10),
        )
        for job in jobs
        if job.started_at and job.started_at >= since
        for step in range(5)
    ]
    for index in range(0, len(metrics), BATCH):
        JobMetric.objects.bulk_create(metrics[index : index + BATCH])
    month = now.date().replace(day=1)
    Budget.objects.bulk_create(
        Budget(project=p, month=month - dt.timedelta(days=40), amount=Decimal("5000"))
        for p in projects
    )
    return jobs


def seed_storage(projects, days: int, now) -> None:
    from controlplane.finops.models import StorageSnapshot

    rows = []
    today = now.date()
    for project in projects:
        for back in range(days):
            for k, kind in enumerate(STORAGE_KINDS):
                rows.append(
                    StorageSnapshot(
                        project=project,
                        day=today - dt.timedelta(days=back),
                        kind=kind,
                        bytes=(days - back) * 10**7 * (k + 1) + project.pk,
                        object_count=days - back,
                        cost=Decimal("0.01"),
                    )
                )
        if len(rows) >= 50_000:
            StorageSnapshot.objects.bulk_create(rows, batch_size=BATCH)
            rows = []
    StorageSnapshot.objects.bulk_create(rows, batch_size=BATCH)


def seed_governance(rng, projects, owner, jobs, now) -> None:
    """Models behind @production (some trained on erased data, some with violations),
    open data-subject requests and pending promotions."""
    from controlplane.gdpr.models import ErasedDataFlag, SubjectRequest
    from controlplane.policies.models import Violation
    from controlplane.registry.models import ModelAlias, ModelVersion, RegisteredModel

    done = [job for job in jobs if job.state == "succeeded"][:N_PROJECTS]
    for i, (project, job) in enumerate(zip(projects, done, strict=False)):
        model = RegisteredModel.objects.create(
            project=project, name=f"m{i}", task="text-generation", created_by=owner
        )
        version = ModelVersion.objects.create(
            model=model,
            number=1,
            state="ready",
            source_job=job,
            source_attempt=1,
            created_by=owner,
        )
        ModelAlias.objects.create(
            model=model, name="production", version=version, moved_by=owner, moved_at=now
        )
        request = SubjectRequest.objects.create(
            project=project,
            kind="erasure",
            legal_basis="Art. 17",
            state="pending_review" if i % 2 else "completed",
            filed_by=owner,
            received_at=now,
            deadline_at=now + dt.timedelta(days=30 - i % 40),
        )
        if i % 7 == 0:
            ErasedDataFlag.objects.create(model_version=version, request=request)
        if i % 3 == 0:
            Violation.objects.create(
                project=project,
                rule="evaluation_required",
                subject_type="model_version",
                subject_id=version.pk,
                subject_label=f"m{i} v1",
                reason="no evaluation",
                policy_version="project v1",
                last_seen_at=now,
            )


# -- timing ------------------------------------------------------------------------------


def time_requests(client, url: str, n: int, before=None, **headers) -> tuple[list[float], int]:
    from django.db import connection

    for _ in range(3):  # warm-up: templates, plans, connection
        assert client.get(url, **headers).status_code == 200, url
    queries = []

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    # A wrapper, not CaptureQueriesContext: the request closes and reopens the connection.
    if before is not None:
        before()
    with connection.execute_wrapper(count):
        client.get(url, **headers)
    times = []
    for _ in range(n):
        if before is not None:
            before()
        started = time.perf_counter()
        response = client.get(url, **headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return times, len(queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="leave the database for profiling")
    args = parser.parse_args()
    n_attempts, days = (10_000, 90) if args.quick else (100_000, 730)
    psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    psql(f"CREATE DATABASE {DB_NAME}")
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-overview-") as tmp:
            setup_django(Path(tmp))
            started = time.perf_counter()
            org, admin = seed(n_attempts, days)
            vacuum_analyze(DB_NAME)
            print(
                f"seeded {N_PROJECTS} projects, {n_attempts:,} job attempts, "
                f"{days} days x {len(STORAGE_KINDS)} kinds of storage snapshots "
                f"in {time.perf_counter() - started:.0f} s"
            )
            from django.test import Client

            from controlplane.accounts.services import api_token_create

            page = Client()
            page.force_login(admin)
            _token, raw = api_token_create(user=admin, name="bench")
            bearer = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
            cases = [
                ("overview page GET /", page, "/", {}),
                ("GET /api/v1/orgs/bench/usage/", Client(), "/api/v1/orgs/bench/usage/", bearer),
                ("GET /api/v1/orgs/bench/cost/", Client(), "/api/v1/orgs/bench/cost/", bearer),
                (
                    "GET /api/v1/orgs/bench/cost/?group_by=day",
                    Client(),
                    "/api/v1/orgs/bench/cost/?group_by=day",
                    bearer,
                ),
            ]
            from django.core.cache import cache

            # The storage figures are cached until the next snapshot: also time the page as
            # the first request after a snapshot sees it (the cache emptied each time).
            cases.insert(
                1, ("overview page, storage cache cold", page, "/", {"before": cache.clear})
            )
            for name, client, url, headers in cases:
                times, queries = time_requests(client, url, args.requests, **headers)
                results.append((name, times, queries))
                print(
                    f"  {name:45s} p50 {statistics.median(times):7.1f} ms  "
                    f"p95 {percentile(times, 0.95):7.1f} ms  ({queries} queries)"
                )
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    ok = True
    print("\nsummary")
    for name, times, _queries in results:
        p95 = percentile(times, 0.95)
        if name in INFORMATIONAL:
            print(f"  {name}: p95 {p95:.1f} ms (once per new snapshot and scope; not gated)")
            continue
        ok &= p95 < GOAL_MS
        print(
            f"  {name}: p95 {p95:.1f} ms (goal < {GOAL_MS:g}): {'ok' if p95 < GOAL_MS else 'OVER'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
