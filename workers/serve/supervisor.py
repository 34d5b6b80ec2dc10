"""The serve node's replicas: child processes, their health, restarts and drains.

A replica is `<replica command> --spec F --host 127.0.0.1 --port 0 --node NAME` with
CP_SERVE_SECRET in its environment (the front's internal secret; the replica refuses any
request without it). It prints `READY <port>` once the model is loaded and it listens, or
`ERROR <message>` and exits 3 when it cannot load. SIGTERM drains it: it finishes what it
holds and exits 0.

States (ReplicaState): starting (loading, or waiting to restart) -> ready (gets traffic) ->
draining (SIGTERM sent, finishing) -> stopped; failed when it cannot load, does not load
within the load timeout, or died `max_restarts` times within `restart_window` seconds.

Invariants:
- Only READY replicas are routed to. A replica whose process exits, or that fails
  `health_failures` health checks in a row, leaves READY at once (before it is killed and
  restarted), so the front stops picking it before the restart begins.
- Each start of a process has a generation number; the watcher of an older process never
  touches the state of a newer one (a kill -9 and a restart can race its EOF).
- A replica keeps its replica_id across restarts; `restarts` counts them.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.serve.protocol import (
    INTERNAL_SECRET_HEADER,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    to_dict,
)

logger = logging.getLogger("workers.serve.supervisor")

LOAD_ERROR_EXIT_CODE = 3


@dataclass
class SupervisorConfig:
    # A model download and load can take minutes on a cold node.
    load_timeout: float = 600.0
    # How long a draining replica may take to finish what it holds before kill -9.
    drain_timeout: float = 60.0
    health_interval: float = 1.0
    # Generous: a replica busy decoding still answers, but its threads share the GIL.
    health_timeout: float = 2.0
    health_failures: int = 3  # in a row: out of rotation and restarted
    backoff_base: float = 1.0  # first restart after this, doubling up to backoff_max
    backoff_max: float = 30.0
    max_restarts: int = 5  # within restart_window seconds -> failed
    restart_window: float = 300.0


@dataclass
class Replica:
    spec: ReplicaSpec
    state: str = ReplicaState.STARTING
    process: subprocess.Popen | None = None
    generation: int = 0
    port: int | None = None
    restarts: int = 0
    restart_times: collections.deque = field(default_factory=collections.deque)
    restart_at: float | None = None
    started_at: float = 0.0
    error: str = ""
    load_error: str = ""  # set before a process exits: that exit is a load failure
    kill_reason: str = ""  # set when the supervisor kills it for a restart
    health: dict[str, Any] = field(default_factory=dict)
    health_failures: int = 0
    drain_deadline: float | None = None
    reported_terminal: bool = False  # a stopped/failed state has reached the platform
    gpu: str | None = None  # the device it was pinned to (kept across restarts)

    @property
    def replica_id(self) -> str:
        return self.spec.replica_id

    @property
    def deployment(self) -> str:
        return self.spec.deployment

    @property
    def terminal(self) -> bool:
        return self.state in (ReplicaState.STOPPED, ReplicaState.FAILED)


class Supervisor:
    def __init__(
        self,
        *,
        node_name: str,
        command: list[str],
        internal_secret: str,
        workdir: Path,
        env: dict[str, str] | None = None,
        config: SupervisorConfig | None = None,
        clock=time.monotonic,
        gpus: list[str] | None = None,
    ):
        self.node_name = node_name
        self.command = list(command)
        self.internal_secret = internal_secret
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config or SupervisorConfig()
        self._clock = clock
        base_env = dict(os.environ if env is None else env)
        # A replica never needs the node secret (it only ever sees the internal one).
        base_env.pop("SERVE_NODE_SECRET", None)
        base_env["CP_SERVE_SECRET"] = internal_secret
        base_env.setdefault("PYTHONUNBUFFERED", "1")
        self._env = base_env
        # The GPUs cuda replicas are spread over, one each (CUDA_VISIBLE_DEVICES of the
        # child): several replicas on a multi-GPU box must not all load onto device 0.
        self.gpus = list(gpus or [])
        self._replicas: dict[str, Replica] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._health_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")

    # -- what the node and the front ask -------------------------------------------------

    def apply(self, specs: list[ReplicaSpec]) -> None:
        """Run what the platform's answer lists; drain what it no longer lists."""
        wanted = {spec.replica_id: spec for spec in specs}
        with self._lock:
            for replica_id, spec in wanted.items():
                replica = self._replicas.get(replica_id)
                if replica is None:
                    replica = self._replicas[replica_id] = Replica(spec=spec)
                    if spec.draining:
                        replica.state = ReplicaState.STOPPED
                    else:
                        self._start(replica)
                    continue
                replica.spec = spec
                if spec.draining:
                    self._drain(replica, "marked draining")
            for replica_id, replica in list(self._replicas.items()):
                if replica_id in wanted:
                    continue
                if replica.terminal:
                    if replica.reported_terminal:
                        del self._replicas[replica_id]
                        # The spec holds the project's subject key: leave nothing behind.
                        (self.workdir / f"{replica_id}.json").unlink(missing_ok=True)
                else:
                    self._drain(replica, "no longer in the sync answer")

    def statuses(self) -> list[ReplicaStatus]:
        with self._lock:
            out = []
            for replica in self._replicas.values():
                if replica.terminal:
                    replica.reported_terminal = True
                process = replica.process
                out.append(
                    ReplicaStatus(
                        replica_id=replica.replica_id,
                        state=str(replica.state),
                        pid=process.pid if process is not None else None,
                        restarts=replica.restarts,
                        error=replica.error,
                        health=dict(replica.health),
                    )
                )
            return out

    def ready(self, deployment: str) -> list[tuple[str, int]]:
        """(replica_id, port) of this deployment's local replicas that take traffic."""
        with self._lock:
            return [
                (r.replica_id, r.port)
                for r in self._replicas.values()
                if r.deployment == deployment
                and r.state == ReplicaState.READY
                and r.port
                # Draining on its own (someone sent it SIGTERM): it refuses new requests.
                and not r.health.get("draining")
            ]

    def ready_port(self, replica_id: str) -> int | None:
        with self._lock:
            replica = self._replicas.get(replica_id)
            if replica is not None and replica.state == ReplicaState.READY:
                return replica.port
            return None

    def replica(self, replica_id: str) -> Replica | None:
        with self._lock:
            return self._replicas.get(replica_id)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._monitor = threading.Thread(target=self._monitor_loop, name="supervisor", daemon=True)
        self._monitor.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain every replica and wait for them (kill -9 whatever is left at the end)."""
        self._stop.set()
        with self._lock:
            processes = []
            for replica in self._replicas.values():
                replica.restart_at = None
                if replica.process is not None and replica.process.poll() is None:
                    replica.state = ReplicaState.DRAINING
                    _signal(replica.process, signal.SIGTERM)
                    processes.append(replica.process)
                elif not replica.terminal:
                    replica.state = ReplicaState.STOPPED  # was waiting for a restart
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        self._health_pool.shutdown(wait=False, cancel_futures=True)

    def _env_for(self, replica: Replica) -> dict[str, str]:
        if replica.spec.device != "cuda" or not self.gpus:
            return self._env
        if replica.gpu is None:
            with self._lock:
                taken = collections.Counter(
                    r.gpu for r in self._replicas.values() if r.gpu is not None and not r.terminal
                )
            replica.gpu = min(self.gpus, key=lambda gpu: (taken[gpu], self.gpus.index(gpu)))
        return {**self._env, "CUDA_VISIBLE_DEVICES": replica.gpu}

    def _start(self, replica: Replica) -> None:
        spec_path = self.workdir / f"{replica.replica_id}.json"
        spec_path.write_text(json.dumps(to_dict(replica.spec)))
        command = [
            *self.command,
            *("--spec", str(spec_path), "--host", "127.0.0.1", "--port", "0"),
            *("--node", self.node_name),
        ]
        replica.generation += 1
        replica.state = ReplicaState.STARTING
        replica.port = None
        replica.restart_at = None
        replica.load_error = ""
        replica.kill_reason = ""
        replica.health_failures = 0
        replica.health = {}
        replica.started_at = self._clock()
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=self._env_for(replica),
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            replica.state = ReplicaState.FAILED
            replica.error = f"could not start {command[0]}: {exc}"
            logger.error("replica %s: %s", replica.replica_id, replica.error)
            return
        replica.process = process
        logger.info(
            "replica %s of %s: started pid %d (start %d)",
            replica.replica_id,
            replica.deployment,
            process.pid,
            replica.generation,
        )
        threading.Thread(
            target=self._watch,
            args=(replica, process, replica.generation),
            name=f"replica-{replica.replica_id[:8]}",
            daemon=True,
        ).start()

    def _watch(self, replica: Replica, process: subprocess.Popen, generation: int) -> None:
        """Read the replica's stdout (READY / ERROR lines), then record its exit."""
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            word, _, rest = line.partition(" ")
            with self._lock:
                current = replica.generation == generation
                if current and word == "READY" and replica.state == ReplicaState.STARTING:
                    try:
                        replica.port = int(rest.strip())
                    except ValueError:
                        replica.load_error = f"bad READY line: {line!r}"
                        _signal(process, signal.SIGKILL)
                        continue
                    replica.state = ReplicaState.READY
                    replica.error = ""
                    logger.info("replica %s: ready on port %d", replica.replica_id, replica.port)
                    continue
                if current and word == "ERROR":
                    replica.load_error = rest.strip() or "the replica reported an error"
                    continue
            logger.info("replica %s: %s", replica.replica_id[:8], line)
        code = process.wait()
        with self._lock:
            if replica.generation == generation:
                self._on_exit(replica, code)

    def _on_exit(self, replica: Replica, code: int) -> None:
        replica.process = None
        replica.port = None
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if replica.state == ReplicaState.DRAINING or self._stop.is_set():
            replica.state = ReplicaState.STOPPED
            replica.drain_deadline = None
            logger.info("replica %s: stopped (%s)", replica.replica_id, how)
            return
        if replica.terminal:
            return
        if replica.load_error or code == LOAD_ERROR_EXIT_CODE:
            replica.state = ReplicaState.FAILED
            replica.error = replica.load_error or f"could not load the model ({how})"
            logger.error("replica %s: failed: %s", replica.replica_id, replica.error)
            return
        self._schedule_restart(replica, replica.kill_reason or how)

    def _restart(self, replica: Replica, reason: str) -> None:
        """Out of rotation now; the watcher sees the exit and schedules the restart."""
        replica.state = ReplicaState.STARTING
        replica.kill_reason = reason
        logger.warning("replica %s: %s; restarting it", replica.replica_id, reason)
        if replica.process is not None:
            _signal(replica.process, signal.SIGKILL)

    def _schedule_restart(self, replica: Replica, reason: str) -> None:
        config = self.config
        now = self._clock()
        times = replica.restart_times
        while times and now - times[0] > config.restart_window:
            times.popleft()
        if len(times) >= config.max_restarts:
            replica.state = ReplicaState.FAILED
            replica.error = (
                f"restarted {len(times)} times in {config.restart_window:.0f} s; last: {reason}"
            )
            logger.error("replica %s: failed: %s", replica.replica_id, replica.error)
            return
        times.append(now)
        replica.restarts += 1
        replica.state = ReplicaState.STARTING
        replica.error = reason
        delay = min(config.backoff_max, config.backoff_base * 2 ** (len(times) - 1))
        replica.restart_at = now + delay
        logger.warning(
            "replica %s: %s; restart %d in %.1f s",
            replica.replica_id,
            reason,
            replica.restarts,
            delay,
        )

    def _drain(self, replica: Replica, why: str) -> None:
        if replica.state in (ReplicaState.DRAINING, ReplicaState.STOPPED):
            return
        replica.restart_at = None
        if replica.process is None or replica.process.poll() is not None:
            replica.state = (
                ReplicaState.FAILED
                if replica.state == ReplicaState.FAILED
                else ReplicaState.STOPPED
            )
            return
        logger.info("replica %s: draining (%s)", replica.replica_id, why)
        replica.state = ReplicaState.DRAINING
        replica.drain_deadline = self._clock() + self.config.drain_timeout
        _signal(replica.process, signal.SIGTERM)

    # -- the monitor: restarts, timeouts, health ----------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.config.health_interval):
            try:
                self._tick()
            except Exception:  # the monitor must outlive any one bad tick
                logger.exception("supervisor tick failed")

    def _tick(self) -> None:
        now = self._clock()
        to_check: list[tuple[Replica, int, int]] = []
        with self._lock:
            for replica in self._replicas.values():
                process = replica.process
                if replica.restart_at is not None and now >= replica.restart_at:
                    self._start(replica)
                elif replica.state == ReplicaState.STARTING and process is not None:
                    if now - replica.started_at > self.config.load_timeout:
                        replica.load_error = f"did not load within {self.config.load_timeout:g} s"
                        _signal(process, signal.SIGKILL)
                elif replica.state == ReplicaState.DRAINING and process is not None:
                    if replica.drain_deadline is not None and now > replica.drain_deadline:
                        logger.warning(
                            "replica %s: still draining after %.0f s; killing it",
                            replica.replica_id,
                            self.config.drain_timeout,
                        )
                        _signal(process, signal.SIGKILL)
                elif replica.state == ReplicaState.READY and replica.port:
                    to_check.append((replica, replica.port, replica.generation))
        results = self._health_pool.map(lambda item: self._check(item[1]), to_check)
        with self._lock:
            for (replica, _port, generation), health in zip(to_check, results, strict=True):
                if replica.generation != generation or replica.state != ReplicaState.READY:
                    continue
                if health is not None:
                    replica.health = health
                    replica.health_failures = 0
                    continue
                replica.health_failures += 1
                if replica.health_failures >= self.config.health_failures:
                    self._restart(
                        replica, f"failed {replica.health_failures} health checks in a row"
                    )

    def _check(self, port: int) -> dict[str, Any] | None:
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=self.config.health_timeout
        )
        try:
            connection.request(
                "GET", "/health", headers={INTERNAL_SECRET_HEADER: self.internal_secret}
            )
            response = connection.getresponse()
            health = json.loads(response.read())
            if not isinstance(health, dict):
                return None
            # A replica draining on its own answers 503 {"draining": true}: not a failure
            # to restart it for; `ready()` keeps traffic away until it exits.
            if response.status != 200 and health.get("draining") is not True:
                return None
            health["checked_at"] = time.time()
            return health
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            connection.close()


def _signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass  # already gone: its watcher records the exit
