"""A Redis cache that fails open: while Redis is unreachable every operation is served by a
per-process memory cache instead of raising.

The cache holds nothing that must survive (API throttle counters, the gpu-workers-up
answer), so an outage must cost precision, not requests: throttling goes on per process
(each web process counts on its own, so the effective limit is the rate times the number
of processes), and nothing answers 500. After a failure the process stops asking Redis
for RETRY_SECONDS, so an outage costs one connect timeout per process every few seconds,
not one per request. `cache_health` counts what was served by the fallback; /healthz and
/readyz report it.

    CACHES = {"default": {"BACKEND": "controlplane.cache.FailOpenRedisCache",
                          "LOCATION": "redis://host:6379/1"}}
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Seconds a process serves from its fallback after Redis failed, before trying Redis again.
RETRY_SECONDS = 5.0
# At most one warning per this many seconds while the outage lasts.
LOG_EVERY_SECONDS = 60.0
# Redis answers a healthy request in a millisecond; these bound a host that drops packets.
DEFAULT_TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}


class CacheHealth:
    """Process-wide state of one Redis location (Django makes a cache object per thread)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._lock = threading.Lock()
        self.failures = 0  # Redis operations that raised
        self.fallback_operations = 0  # operations served by the local fallback
        self.last_error = ""
        self.down_since: float | None = None  # time.monotonic() of the outage's first failure
        self._retry_at = 0.0
        self._logged_at = 0.0

    def should_try_redis(self) -> bool:
        return self.down_since is None or time.monotonic() >= self._retry_at

    def record_failure(self, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            self.last_error = f"{type(error).__name__}: {error}"
            self._retry_at = now + RETRY_SECONDS
            if self.down_since is None:
                self.down_since = now
            if now - self._logged_at < LOG_EVERY_SECONDS:
                return
            self._logged_at = now
            served = self.fallback_operations
        log.warning(
            "cache %s unreachable (%s); serving from a per-process fallback "
            "(%d operations so far), throttling is per process until it is back",
            self.location,
            error,
            served,
        )

    def record_fallback(self) -> None:
        with self._lock:
            self.fallback_operations += 1

    def record_success(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            outage = time.monotonic() - self.down_since
            self.down_since = None
            self._logged_at = 0.0
        log.warning("cache %s reachable again after %.0fs", self.location, outage)

    def status(self) -> dict[str, Any]:
        down_since = self.down_since
        return {
            "ok": down_since is None,
            "backend": "redis",
            "failures": self.failures,
            "fallback_operations": self.fallback_operations,
            "last_error": self.last_error,
            "down_for_seconds": None
            if down_since is None
            else round(time.monotonic() - down_since, 1),
        }


_health: dict[str, CacheHealth] = {}
_health_lock = threading.Lock()


def health_of(location: str) -> CacheHealth:
    with _health_lock:
        return _health.setdefault(location, CacheHealth(location))


def _fail_open(name: str):
    def operation(self, *args, **kwargs):
        health = self.health
        if health.should_try_redis():
            try:
                result = getattr(RedisCache, name)(self, *args, **kwargs)
            except RedisError as error:
                health.record_failure(error)
            else:
                health.record_success()
                return result
        health.record_fallback()
        return getattr(self.fallback, name)(*args, **kwargs)

    operation.__name__ = name
    return operation


class FailOpenRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        params = {**params, "OPTIONS": {**DEFAULT_TIMEOUTS, **params.get("OPTIONS", {})}}
        super().__init__(server, params)
        location = server if isinstance(server, str) else ",".join(server)
        self.health = health_of(location)
        # LocMemCache instances of one name share their storage: one fallback per process.
        self.fallback = LocMemCache(f"fail-open:{location}", {"OPTIONS": {"MAX_ENTRIES": 10_000}})

    add = _fail_open("add")
    get = _fail_open("get")
    set = _fail_open("set")
    touch = _fail_open("touch")
    delete = _fail_open("delete")
    get_many = _fail_open("get_many")
    has_key = _fail_open("has_key")
    incr = _fail_open("incr")
    set_many = _fail_open("set_many")
    delete_many = _fail_open("delete_many")
    clear = _fail_open("clear")

    def probe(self) -> None:
        """Ask Redis itself (no fallback): raises if it does not answer."""
        self._cache.get_client().ping()


def cache_status() -> dict[str, Any]:
    """The default cache's state as this process knows it, without a network call."""
    from django.core.cache import caches

    cache = caches["default"]
    if isinstance(cache, FailOpenRedisCache):
        return cache.health.status()
    return {"ok": True, "backend": type(cache).__name__}
