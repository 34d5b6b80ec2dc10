"""Liveness and readiness of the web process (the /healthz and /readyz probes).

- liveness (`liveness_report`): no network call, only what this process already knows
  (the cache's fail-open state, its last failed broker send). An orchestrator restarts a
  process whose liveness fails, and restarting does not bring Redis back: it answers
  200 "degraded", never an error, while a dependency is down.
- readiness (`readiness_report`): each dependency checked for real, in parallel, each
  with its latency and error. Only the database makes the process unready (503): without
  it no request can be served, while without the broker jobs wait in the outbox, without
  the cache throttling is per process, and without the object store only what touches
  objects fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.db import DatabaseError, connection
from django.utils import timezone

# Bound on each network check, so a probe answers within its orchestrator's timeout.
CHECK_TIMEOUT_SECONDS = 3.0
PROBE_KEY = "system/readyz-probe"


def liveness_report() -> dict[str, Any]:
    from controlplane.cache import cache_status
    from controlplane.jobs.dispatch import broker_health

    checks = {"cache": cache_status(), "broker": broker_health.status()}
    degraded = sorted(name for name, check in checks.items() if not check["ok"])
    return {"status": "degraded" if degraded else "ok", "degraded": degraded, "checks": checks}


def readiness_report() -> tuple[dict[str, Any], bool]:
    """Returns the report and whether the process is ready (the database answers)."""
    from controlplane.cache import cache_status

    checks: dict[str, dict[str, Any]] = {}
    # The database on this thread: its connection is the one requests use.
    checks["database"] = _timed(check_database)
    # Not a `with` block: leaving one waits for every thread, and a hanging check must
    # not hang the probe (its thread finishes, or not, in the background).
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="readyz")
    try:
        futures = {
            "broker": pool.submit(_timed, check_broker),
            "object_store": pool.submit(_timed, check_object_store),
            "cache": pool.submit(_timed, check_cache),
        }
        deadline = time.monotonic() + CHECK_TIMEOUT_SECONDS
        for name, future in futures.items():
            try:
                checks[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                checks[name] = {"ok": False, "error": f"no answer in {CHECK_TIMEOUT_SECONDS:g}s"}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    # The fallback's counters are worth seeing even once Redis answers again.
    checks["cache"].update({k: v for k, v in cache_status().items() if k != "ok"})
    if checks["database"]["ok"]:
        checks["dispatch_outbox"] = _timed(check_dispatch_outbox)
    ready = checks["database"]["ok"]
    failing = sorted(name for name, check in checks.items() if not check["ok"])
    status = "unavailable" if not ready else ("degraded" if failing else "ok")
    return {"status": status, "failing": failing, "checks": checks}, ready


def _timed(check: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        extra = check() or {}
        result: dict[str, Any] = {"ok": True, **extra}
    except Exception as error:  # noqa: BLE001 - a probe reports every failure, never raises
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    result["latency_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return result


def check_database() -> None:
    try:
        _select_one()
    except DatabaseError:
        if connection.in_atomic_block:
            raise
        # A connection kept from before a database restart is stale, not an outage: the
        # next request would open a new one, and so does this check.
        connection.close()
        _select_one()


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_broker() -> None:
    from controlplane.celery_app import app

    with app.connection_for_write() as broker:
        broker.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_SECONDS
        )


def check_object_store() -> None:
    from controlplane.storage import object_store

    object_store().exists(PROBE_KEY)  # a HEAD: an answer, even "no such key", is enough


def check_cache() -> None:
    from django.core.cache import caches

    from controlplane.cache import FailOpenRedisCache

    cache = caches["default"]
    if isinstance(cache, FailOpenRedisCache):
        cache.probe()


def check_dispatch_outbox() -> dict[str, Any]:
    """Job dispatches not yet sent: a backlog that grows means the broker is not taking them."""
    from django.db.models import Count, Min

    from controlplane.jobs.models import DispatchState, JobDispatch

    pending = JobDispatch.objects.filter(state=DispatchState.PENDING).aggregate(
        count=Count("id"), oldest=Min("created_at")
    )
    oldest = pending["oldest"]
    return {
        "pending": pending["count"],
        "oldest_pending_seconds": None
        if oldest is None
        else round((timezone.now() - oldest).total_seconds(), 1),
    }
