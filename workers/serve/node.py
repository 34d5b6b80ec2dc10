"""The serve node: the sync loop with the platform, and what the front reads from it.

Every `sync_interval` seconds the node POSTs a NodeReport (its replicas' states) to the
platform and applies the SyncAnswer: the supervisor starts the replicas listed that it
does not run and drains those no longer listed; the deployments and routes replace the
front's; cached token verdicts of revoked tokens are dropped.

The platform unreachable: the node keeps serving with its last answer and cached verdicts
(logged once per outage) and asks again at the next interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from workers.serve.platform_client import PlatformClient, PlatformUnavailable
from workers.serve.protocol import (
    AUTHORIZE_TTL,
    SYNC_INTERVAL,
    AuthorizeAnswer,
    DeploymentInfo,
    NodeReport,
    Route,
    SyncAnswer,
)
from workers.serve.supervisor import Supervisor

logger = logging.getLogger("workers.serve.node")


@dataclass
class _Verdict:
    answer: AuthorizeAnswer
    expires_at: float
    stale_until: float


class AuthCache:
    """Token verdicts by (token sha256, deployment key).

    A verdict is fresh for its answer's ttl. While the platform is unreachable an expired
    one still counts for up to `stale_grace` seconds: a node keeps serving the callers it
    knows through a platform restart (revocations reach it with the next sync anyway).
    """

    MAX_ENTRIES = 100_000

    def __init__(self, *, stale_grace: float = 600.0, clock=time.monotonic):
        self._entries: dict[tuple[str, str], _Verdict] = {}
        self._lock = threading.Lock()
        self._stale_grace = stale_grace
        self._clock = clock

    def get(self, key: tuple[str, str], *, stale_ok: bool = False) -> AuthorizeAnswer | None:
        now = self._clock()
        with self._lock:
            verdict = self._entries.get(key)
        if verdict is None:
            return None
        if now < verdict.expires_at or (stale_ok and now < verdict.stale_until):
            return verdict.answer
        return None

    def put(self, key: tuple[str, str], answer: AuthorizeAnswer) -> None:
        now = self._clock()
        ttl = answer.ttl if answer.ttl and answer.ttl > 0 else AUTHORIZE_TTL
        verdict = _Verdict(answer, now + ttl, now + ttl + self._stale_grace)
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries = {k: v for k, v in self._entries.items() if now < v.stale_until}
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
            self._entries[key] = verdict

    def revoke(self, token_ids: list[int]) -> int:
        if not token_ids:
            return 0
        revoked = set(token_ids)
        with self._lock:
            gone = [
                key
                for key, verdict in self._entries.items()
                if verdict.answer.caller is not None and verdict.answer.caller.token_id in revoked
            ]
            for key in gone:
                del self._entries[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)


class Node:
    def __init__(
        self,
        *,
        name: str,
        public_url: str,
        device: str,
        capacity: int,
        platform: PlatformClient,
        supervisor: Supervisor,
        node_secret: str,
        clock=time.monotonic,
    ):
        self.name = name
        self.public_url = public_url.rstrip("/")
        self.device = device
        self.capacity = capacity
        self.platform = platform
        self.supervisor = supervisor
        self.node_secret = node_secret
        self.auth_cache = AuthCache(clock=clock)
        self.started_at = time.time()
        self._clock = clock
        self._lock = threading.Lock()
        self._answer: SyncAnswer | None = None
        self._deployments: dict[str, DeploymentInfo] = {}
        self._platform_down_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced = threading.Event()

    # -- what the front reads ----------------------------------------------------------

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    @property
    def platform_reachable(self) -> bool:
        return self._platform_down_since is None

    def deployment(self, key: str) -> DeploymentInfo | None:
        with self._lock:
            return self._deployments.get(key)

    def remote_routes(self, key: str) -> list[Route]:
        """READY replicas of the deployment on other nodes (the platform's view)."""
        with self._lock:
            answer = self._answer
        if answer is None:
            return []
        return [r for r in answer.routes.get(key, []) if r.node_url.rstrip("/") != self.public_url]

    def authorize(self, token_sha256: str, deployment: str) -> AuthorizeAnswer | None:
        """The verdict for this token and deployment; None when nobody can tell now."""
        key = (token_sha256, deployment)
        cached = self.auth_cache.get(key)
        if cached is not None:
            return cached
        try:
            answer = self.platform.authorize(token_sha256, deployment)
        except PlatformUnavailable as exc:
            # The sync loop logs the outage once; this would log it once per request.
            log = logger.debug if self._platform_down_since is not None else logger.warning
            log("authorize: platform unreachable: %s", exc)
            return self.auth_cache.get(key, stale_ok=True)
        self.auth_cache.put(key, answer)
        return answer

    # -- the sync loop -----------------------------------------------------------------

    def report(self) -> NodeReport:
        return NodeReport(
            node=self.name,
            url=self.public_url,
            device=self.device,
            capacity=self.capacity,
            replicas=self.supervisor.statuses(),
            started_at=self.started_at,
        )

    def sync_once(self) -> bool:
        try:
            answer = self.platform.sync(self.report())
        except PlatformUnavailable as exc:
            if self._platform_down_since is None:
                self._platform_down_since = self._clock()
                logger.warning("platform unreachable, serving with the last answer: %s", exc)
            return False
        if self._platform_down_since is not None:
            logger.warning(
                "platform reachable again after %.1f s",
                self._clock() - self._platform_down_since,
            )
            self._platform_down_since = None
        self.apply(answer)
        return True

    def apply(self, answer: SyncAnswer) -> None:
        with self._lock:
            self._answer = answer
            self._deployments = {d.key: d for d in answer.deployments}
        self.auth_cache.revoke(answer.revoked_token_ids)
        self.supervisor.apply(answer.replicas)
        self._synced.set()

    def _interval(self) -> float:
        with self._lock:
            answer = self._answer
        interval = answer.sync_interval if answer is not None else SYNC_INTERVAL
        return max(0.05, interval)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # a bad answer must not end the loop
                logger.exception("sync failed")
            self._stop.wait(self._interval())

    def start(self) -> None:
        self.supervisor.start()
        self._thread = threading.Thread(target=self._loop, name="sync", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.supervisor.stop(timeout=drain_timeout)
        # One last report: the platform learns at once that these replicas are gone.
        try:
            self.platform.sync(self.report())
        except PlatformUnavailable:
            pass
