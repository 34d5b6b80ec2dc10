"""Server time of each main page with the demo's data (issue 19: p95 under 150 ms).

    .venv/bin/python bench/bench_pages.py                  # the demo walk, then ~30 requests a page
    .venv/bin/python bench/bench_pages.py --train-steps 150  # the demo's own training length
    .venv/bin/python bench/bench_pages.py --reuse          # time again on the last run's data

The data is the demo's, made by the demo itself: `manage.py demo --no-serve` (real worker
processes, the filesystem broker) on a scratch PostgreSQL database and data folder. Then,
in this process, with production settings (DEBUG off), Django's test client through the
whole middleware stack asks each main page as the demo's roles see it: the overview, the
project, datasets, every dataset version, jobs, every job page, experiments, models and
their versions, members, the audit trail. The figure is the request's server time (what
the `Server-Timing: app;dur=` header reports), p50 and p95 after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT), str(ROOT / "bench")]

from bench_api import PG, psql, vacuum_analyze  # noqa: E402

DB_NAME = "controlplane_bench_pages"
DATA_DIR = ROOT / "var" / "bench-pages"
GOAL_MS = 150.0
ROLES = ["alice", "bob", "carol", "dora"]  # owner, engineer, viewer, compliance (the demo's)


def demo_env() -> dict[str, str]:
    """The demo's embedded default (filesystem broker, local store), on the scratch database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"CELERY_BROKER_URL", "CACHE_URL"} and not k.startswith("OBJECT_STORE_")
    }
    env.update(DATABASE_URL=f"{PG}/{DB_NAME}", CONTROLPLANE_DATA_DIR=str(DATA_DIR))
    return env


def build_demo_data(train_steps: int) -> None:
    psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    psql(f"CREATE DATABASE {DB_NAME}")
    started = time.perf_counter()
    for args in (
        ["migrate", "--noinput"],
        ["demo", "--no-serve", "--train-steps", str(train_steps)],
    ):
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=demo_env(),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            sys.exit(
                f"manage.py {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
    vacuum_analyze(DB_NAME)
    print(
        f"demo data built in {time.perf_counter() - started:.0f} s ({train_steps} training steps)"
    )


def setup_django() -> None:
    os.environ.update(demo_env())
    os.environ.update(
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 60,
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
    )
    import logging

    import django
    from django.core.management import call_command

    django.setup()
    # A role's 404 on a project it is not in is expected here (skipped), not news.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    call_command("collectstatic", interactive=False, verbosity=0)  # the page's manifest


def main_pages() -> list[tuple[str, str]]:
    """(name, path) of each main page of the demo's projects; every job and version page."""
    from django.urls import reverse

    from controlplane.datasets.models import DatasetVersion
    from controlplane.jobs.models import Job
    from controlplane.projects.models import Project
    from controlplane.registry.models import ModelVersion

    pages = [("overview", reverse("overview")), ("projects", reverse("project-list"))]
    for project in Project.objects.order_by("pk"):
        p = project.pk
        pages += [
            ("project", reverse("project-detail", args=[p])),
            ("datasets", reverse("dataset-list", args=[p])),
            ("jobs", reverse("job-list", args=[p])),
            ("experiments", reverse("experiment-compare", args=[p])),
            ("models", reverse("registry-models", args=[p])),
            ("members", reverse("member-list", args=[p])),
            ("audit", reverse("audit-timeline", args=[p])),
        ]
        for version in DatasetVersion.objects.filter(dataset__project=project).select_related(
            "dataset"
        ):
            pages.append(("dataset", reverse("dataset-detail", args=[p, version.dataset_id])))
            pages.append(
                (
                    "dataset version",
                    reverse("dataset-version", args=[p, version.dataset_id, version.number]),
                )
            )
        for job in Job.objects.filter(project=project).order_by("pk"):
            pages.append((f"job ({job.kind})", reverse("job-detail", args=[p, job.pk])))
        for version in ModelVersion.objects.filter(model__project=project).select_related("model"):
            pages.append(("model", reverse("registry-model", args=[p, version.model.name])))
            pages.append(
                (
                    "model version",
                    reverse("registry-version", args=[p, version.model.name, version.number]),
                )
            )
    return list(dict.fromkeys(pages))  # each once, in order


def server_ms(response) -> float:
    return float(response.headers["Server-Timing"].split("dur=")[1])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def time_pages(requests: int) -> dict[str, list[float]]:
    """Server times by page name (all of a name's pages, all roles that may see them)."""
    from django.contrib.auth.models import User
    from django.test import Client

    clients = {}
    for username in ROLES:
        client = Client()
        client.force_login(User.objects.get(username=username))
        clients[username] = client
    times: dict[str, list[float]] = {}
    for name, path in main_pages():
        for username, client in clients.items():
            response = client.get(path)
            if response.status_code != 200:  # not this role's page (e.g. a viewer's 404)
                continue
            for _ in range(2):  # warm-up: templates, plans
                client.get(path)
            for _ in range(max(1, requests // len(ROLES))):
                response = client.get(path)
                assert response.status_code == 200, (path, username, response.status_code)
                times.setdefault(name, []).append(server_ms(response))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--requests", type=int, default=30, help="per page, over the roles")
    parser.add_argument("--reuse", action="store_true", help="the last run's demo data")
    parser.add_argument("--keep", action="store_true", help="leave the database and data")
    args = parser.parse_args()
    if not args.reuse:
        build_demo_data(args.train_steps)
    ok = True
    try:
        setup_django()
        times = time_pages(args.requests)
        print(f"\n{'page':28s} {'requests':>8s} {'p50 ms':>8s} {'p95 ms':>8s}")
        for name, values in times.items():
            p95 = percentile(values, 0.95)
            ok &= p95 < GOAL_MS
            flag = "" if p95 < GOAL_MS else "  OVER"
            print(f"{name:28s} {len(values):8d} {statistics.median(values):8.1f} {p95:8.1f}{flag}")
        every = [ms for values in times.values() for ms in values]
        print(
            f"\nall pages: p50 {statistics.median(every):.1f} ms, p95 {percentile(every, 0.95):.1f} ms"
            f" (goal: each page p95 < {GOAL_MS:g} ms): {'ok' if ok else 'OVER'}"
        )
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep and not args.reuse:
            psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
