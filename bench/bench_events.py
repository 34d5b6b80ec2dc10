"""Event application: single-event messages vs batches, one control worker with 2 processes.

    .venv/bin/python bench/bench_events.py            # 3,000-event backlog; 8 s at 1,000/s
    .venv/bin/python bench/bench_events.py --quick    # 1,000-event backlog; 4 s at 1,000/s

Everything real: a scratch PostgreSQL database (migrated), a private `redis-server` on a
free port, and `celery -A controlplane.celery_app worker -Q control --pool prefork -c 2`.
Real jobs (created through `job_create`) receive synthetic worker events (started,
metrics with two values, heartbeats, checkpoints; tests/platform/jobs/eventload.py),
each stamped with its send time as a worker stamps its emit time, published two ways
in the same run:

- single: one `control.apply_event` message per event (what workers sent before);
- batched: as a worker's sink sends now, one `BufferedSink(ControlQueueSink)` per job
  (`control.apply_events`, up to 200 events a message, one message per
  WORKER_EVENT_BATCH_MS = 100 ms at most while events keep coming).

Per path:
1. Throughput: a backlog is queued before a fresh worker starts; events/s is measured
   from the first to the last `applied_at` (worker start-up excluded). The batched
   backlog is 5 times larger (it drains faster).
2. Lag (applied_at - emitted_at per event; p50/p95/max) at 1,000 events/s offered by 8
   jobs (two sender threads), and for the single path also at half its throughput. When
   the offered rate is above the throughput the queue grows and the lag with it: the
   figures say so, with how many events were applied within the wait.
Bounded (two to three minutes): each phase waits at most 8-15 s for the worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT), str(ROOT / "bench")]

from bench_api import PG, psql  # noqa: E402

DB_NAME = "controlplane_bench_events"
N_JOBS = 8
BATCH_SECONDS = None  # None: the workers' default (WORKER_EVENT_BATCH_MS)


def setup_django(data_dir: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DATABASE_URL=f"{PG}/{DB_NAME}",
        CONTROLPLANE_DATA_DIR=str(data_dir),
        OBJECT_STORE_ROOT=str(data_dir / "objects"),
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def make_jobs(count: int, steps: int):
    from django.contrib.auth.models import User

    from controlplane.jobs.models import Job
    from controlplane.projects.services import project_create
    from tests.platform.jobs.eventload import SyntheticJob

    user = User.objects.create_user(f"bench{time.monotonic_ns()}", password="bench-pw-1")
    project = project_create(name="Bench", slug=f"bench-{time.monotonic_ns()}", actor=user)
    jobs = Job.objects.bulk_create(
        [Job(project=project, kind="inspect", created_by=user, params={}) for _ in range(count)]
    )
    # Long runs: no finish inside the window, a checkpoint every 100 steps.
    return [
        SyntheticJob(
            job_id=job.pk,
            output_prefix=job.output_prefix,
            steps=steps,
            checkpoint_every=100,
            heartbeat_every=20,
        )
        for job in jobs
    ]


def applied_times(job_ids: list[int]) -> list[tuple[float, float]]:
    """(emitted_at, applied_at) in epoch seconds for every applied event of the jobs."""
    from controlplane.jobs.models import JobEventRecord

    rows = JobEventRecord.objects.filter(job_id__in=job_ids).values_list("emitted_at", "applied_at")
    return [(emitted.timestamp(), applied.timestamp()) for emitted, applied in rows]


def wait_applied(job_ids: list[int], expected: int, timeout: float) -> int:
    from controlplane.jobs.models import JobEventRecord

    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = JobEventRecord.objects.filter(job_id__in=job_ids).count()
        if count >= expected:
            break
        time.sleep(0.25)
    return count


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def offer(
    broker_url: str, jobs: list, rate: float, seconds: float, *, batched: bool
) -> tuple[int, float, int]:
    """Send the jobs' events at `rate` for `seconds` from two threads (one sender tops out
    near 1,000/s here); returns (events sent, seconds it took, messages sent)."""
    from tests.platform.jobs.eventload import BatchingSender, EventSender, interleave

    halves = [jobs[: len(jobs) // 2], jobs[len(jobs) // 2 :]]
    streams = [interleave(half, seed=2) for half in halves]
    senders = [
        BatchingSender(broker_url, batch_seconds=BATCH_SECONDS)
        if batched
        else EventSender(broker_url)
        for _ in streams
    ]
    sent = [0, 0]
    start = time.time()

    def send(index: int) -> None:
        per_thread = rate / 2
        for position, event in enumerate(streams[index]):
            due = start + position / per_thread
            if due - start > seconds:
                break
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            senders[index].send(event)
            sent[index] += 1

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.time() - start
    for sender in senders:
        sender.close()
    messages = sum(sender.messages for sender in senders) if batched else sum(sent)
    return sum(sent), took, messages


def lag_figures(job_ids: list[int], offered: int, wait: float) -> tuple[str, float]:
    """A line for the report, and the p95 lag in seconds (inf when nothing applied)."""
    applied = wait_applied(job_ids, offered, timeout=wait)
    lags = [applied_at - emitted for emitted, applied_at in applied_times(job_ids)]
    if not lags:
        return f"0/{offered} applied", float("inf")
    p95 = percentile(lags, 0.95)
    return (
        f"{applied}/{offered} applied within {wait:.0f} s of the last send; lag "
        f"p50 {statistics.median(lags) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {max(lags) * 1000:.0f} ms"
    ), p95


def cpu_seconds(worker) -> float:
    """CPU time (user + system) the control worker's processes have used so far: what a
    path costs per event, whatever else the shared machine is doing."""
    import psutil

    main = psutil.Process(worker.process.pid)
    total = 0.0
    for process in [main, *main.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def forget_queued_events(broker_url: str) -> None:
    """Empty the private broker's control queue (and what a stopped worker held unacked)
    so that the next phase measures its own events only."""
    import redis

    client = redis.Redis.from_url(broker_url)
    for key in client.scan_iter():
        if key.startswith((b"control", b"unacked")):
            client.delete(key)


def measure_throughput(
    env: dict, broker_url: str, data_dir: Path, backlog: int, *, batched: bool, wait: float
):
    """Queue `backlog` events, start a worker, time the drain; returns (events/s, worker)."""
    import redis

    from tests.platform.jobs.eventload import BatchingSender, ControlWorker, EventSender, interleave

    jobs = make_jobs(N_JOBS, steps=backlog // N_JOBS)
    events = interleave(jobs, seed=1)
    sender = (
        BatchingSender(broker_url, batch_seconds=BATCH_SECONDS)
        if batched
        else EventSender(broker_url)
    )
    for event in events:
        sender.send(event)
    sender.close()  # a batching sender flushes its sinks first
    messages = sender.messages if batched else len(events)
    worker = ControlWorker(
        env, data_dir / f"control-{'batched' if batched else 'single'}.log", concurrency=2
    )
    worker.wait_ready()
    ids = [job.job_id for job in jobs]
    drained = wait_applied(ids, len(events), timeout=wait)
    times = sorted(applied_at for _, applied_at in applied_times(ids))
    throughput = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    redis.Redis.from_url(broker_url).delete("control")  # what was left of the backlog
    time.sleep(1.0)
    line = (
        f"throughput: {throughput:.0f} events/s ({drained} of a {len(events)}-event backlog "
        f"in {messages} messages)"
    )
    return throughput, line, worker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s")
    parser.add_argument(
        "--batch-ms",
        type=int,
        default=None,
        help="the workers' batch interval (default: WORKER_EVENT_BATCH_MS's default)",
    )
    args = parser.parse_args()
    global BATCH_SECONDS
    if args.batch_ms is not None:
        BATCH_SECONDS = args.batch_ms / 1000
    backlog, drain_seconds, load_seconds = (1000, 8.0, 4.0) if args.quick else (3000, 15.0, 8.0)

    from tests.platform.jobs.eventload import control_env
    from tests.redisserver import start_redis_server

    psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    psql(f"CREATE DATABASE {DB_NAME}")
    stop_redis = None
    worker = None
    results: dict[str, tuple[float, float, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
            data_dir = Path(tmp)
            setup_django(data_dir)
            broker_url, stop_redis = start_redis_server()
            env = control_env(
                database_url=f"{PG}/{DB_NAME}",
                broker_url=broker_url,
                data_dir=data_dir,
                OBJECT_STORE_ROOT=str(data_dir / "objects"),
                DEBUG="false",
                SECRET_KEY="bench-" + "x" * 60,
            )
            from workers.config import worker_runtime_config

            batch_ms = (BATCH_SECONDS or worker_runtime_config().event_batch_seconds) * 1000
            print(
                f"control worker: prefork, 2 processes; PostgreSQL {PG}; private Redis; "
                f"workers' batch interval {batch_ms:.0f} ms"
            )
            for batched in (False, True):
                name = "batched" if batched else "single"
                throughput, line, worker = measure_throughput(
                    env,
                    broker_url,
                    data_dir,
                    backlog * 5 if batched else backlog,
                    batched=batched,
                    wait=drain_seconds,
                )
                print(f"[{name}] {line}")
                if not batched:  # lag below saturation: half the measured throughput
                    calm_rate = max(1.0, throughput / 2)
                    calm = make_jobs(N_JOBS, steps=int(calm_rate * 5) // N_JOBS + 1)
                    offered, took, _ = offer(broker_url, calm, calm_rate, 5.0, batched=False)
                    text, _ = lag_figures([job.job_id for job in calm], offered, 10.0)
                    print(f"[{name}] at {offered / took:.0f} events/s offered (half): {text}")
                loaded = make_jobs(N_JOBS, steps=int(args.rate * load_seconds) // N_JOBS + 1)
                cpu_before = cpu_seconds(worker)
                offered, took, messages = offer(
                    broker_url, loaded, args.rate, load_seconds, batched=batched
                )
                text, p95 = lag_figures([job.job_id for job in loaded], offered, 15.0)
                applied = len(applied_times([job.job_id for job in loaded]))
                cpu_ms = (cpu_seconds(worker) - cpu_before) * 1000 / max(1, applied)
                print(
                    f"[{name}] at {offered / took:.0f} events/s offered (target "
                    f"{args.rate:.0f}/s, {offered / max(1, messages):.1f} events a message): {text}"
                )
                print(f"[{name}] control worker CPU: {cpu_ms:.2f} ms per event applied")
                results[name] = (throughput, p95, cpu_ms)
                worker.stop()
                worker = None
                forget_queued_events(broker_url)
            single, batched_figures = results["single"], results["batched"]
            print(
                f"batched/single: throughput x{batched_figures[0] / max(single[0], 1e-9):.1f}; "
                f"lag p95 at {args.rate:.0f}/s {batched_figures[1] * 1000:.0f} ms vs "
                f"{single[1] * 1000:.0f} ms; CPU per event x"
                f"{batched_figures[2] / max(single[2], 1e-9):.2f}"
            )
    finally:
        if worker is not None:
            worker.stop()
        if stop_redis is not None:
            stop_redis()
        from django.db import connections

        connections.close_all()
        psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
