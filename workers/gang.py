"""One node of a multi-node attempt: meeting the other nodes through the platform.

The platform sends the M node tasks of an attempt to the gpu queue together (a gang,
controlplane/jobs/gang.py); each is a JobSpec with ``gang = {"nodes": M, "member": i,
"timeout_seconds": T}``. A node task:

1. downloads what the job needs (as any attempt), then *joins*: a GANG_JOIN_TASK message
   with the endpoint where it would host the rendezvous (WORKER_RENDEZVOUS_HOST, default
   the host name, and WORKER_RENDEZVOUS_PORT, default 29400: torchrun's own);
2. waits for the platform to publish the rendezvous (``rendezvous_key``): the endpoint of
   the first node that joined, which hosts torchrun's c10d store;
3. runs ``torchrun --nnodes M --rdzv_backend c10d --rdzv_endpoint host:port --rdzv_id
   job-<id>-attempt-<n> --local_addr <its own WORKER_RENDEZVOUS_HOST>`` (workers/launch.py;
   torch then opens more connections between the nodes on free ports: the process group's
   store on rank 0's node, gloo/NCCL between every pair) and beats (GANG_BEAT_TASK) while it takes
   part; the platform counts a node whose beats stop as lost, and the attempt with it;
4. says how it ended (GANG_LEAVE_TASK): an error there fails the attempt at once.

Which node speaks for the attempt is only known once torchrun has placed the ranks: the
one whose ranks include rank 0. Until then a node's events are held (JobContext); that
node sends them (numbered from 0, as any attempt's), the others drop theirs.

If the gang is not complete within T seconds the platform supersedes the attempt (every
node stops) and retries it; a node whose port is taken fails the attempt as retryable.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from workers.config import env_int, env_str
from workers.protocol import (
    CONTROL_QUEUE,
    GANG_BEAT_TASK,
    GANG_JOIN_TASK,
    GANG_LEAVE_TASK,
    RETRYABLE_FIELD,
    JobEvent,
    JobSpec,
    rendezvous_key,
)
from workers.storage import ObjectNotFoundError, ObjectStore

log = logging.getLogger(__name__)

DEFAULT_RENDEZVOUS_PORT = 29400  # torchrun's default c10d port
_WAIT_SECONDS = 0.5


def send_control(task: str, payload: dict[str, Any]) -> None:
    """A message to the platform's control queue (replaced in tests)."""
    from workers.celery_app import app

    app.send_task(task, args=[payload], queue=CONTROL_QUEUE)


def rendezvous_endpoint() -> tuple[str, int]:
    """Where this node would host the rendezvous: an address the other nodes reach."""
    host = env_str("WORKER_RENDEZVOUS_HOST", socket.gethostname())
    port = env_int("WORKER_RENDEZVOUS_PORT", DEFAULT_RENDEZVOUS_PORT, minimum=1)
    return host, port


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


class GangMember:
    """This node's part in its gang: join, wait for the rendezvous, beat, leave."""

    def __init__(
        self,
        spec: JobSpec,
        store: ObjectStore,
        send: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        assert spec.gang is not None
        self.spec = spec
        self.store = store
        self.nodes = int(spec.gang["nodes"])
        self.member = int(spec.gang["member"])
        self.timeout_seconds = float(spec.gang["timeout_seconds"])
        self._send = send or send_control
        self._beating = threading.Event()
        self._beats: threading.Thread | None = None

    def _message(self, **extra: Any) -> dict[str, Any]:
        return {
            "job_id": self.spec.job_id,
            "attempt": self.spec.attempt,
            "member": self.member,
            **extra,
        }

    def meet(self, ctx) -> tuple[str, ...]:
        """Join, wait for the rendezvous, and return torchrun's flags for it.

        Raises JobStopped (cancel, or the platform gave up on the gang: superseded) or
        JobFailed (the gang did not meet in time; this node's rendezvous port is taken).
        """
        from workers.runtime import JobFailed

        host, port = rendezvous_endpoint()
        self._send(GANG_JOIN_TASK, self._message(endpoint=f"{host}:{port}"))
        self._start_beats()
        ctx.log(f"node {self.member} of {self.nodes} joined; waiting for the others")
        record = self._wait_for_rendezvous(ctx)
        is_host = int(record["host_member"]) == self.member
        if is_host and port_in_use(port):
            raise JobFailed(
                f"the rendezvous port {port} on {host} is in use (set WORKER_RENDEZVOUS_PORT "
                "to a free one); the attempt is retried",
                retryable=True,
            )
        return (
            "--nnodes",
            str(self.nodes),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            str(record["endpoint"]),
            "--rdzv_id",
            str(record["run_id"]),
            "--rdzv_conf",
            f"is_host={'true' if is_host else 'false'},join_timeout={int(self.timeout_seconds)}",
            # The address the other nodes reach this one at: where rank 0's node serves the
            # process group's store (a free port), instead of a host name they may not resolve.
            "--local_addr",
            host,
        )

    def _wait_for_rendezvous(self, ctx) -> dict[str, Any]:
        from workers.runtime import JobFailed

        key = rendezvous_key(self.spec.job_id, self.spec.attempt)
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            ctx.check_stop()  # superseded: the platform gave up on this gang
            try:
                return json.loads(self.store.get_bytes(key, max_size=64 * 1024))
            except ObjectNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise JobFailed(
                    f"the {self.nodes} nodes of the attempt did not meet within "
                    f"{self.timeout_seconds:.0f} s",
                    retryable=True,
                )
            time.sleep(_WAIT_SECONDS)

    def _start_beats(self) -> None:
        def beat() -> None:
            while not self._beating.wait(self.spec.heartbeat_seconds):
                try:
                    self._send(GANG_BEAT_TASK, self._message())
                except Exception:  # noqa: BLE001 - a broker blip: the node lease has slack
                    log.exception("gang beat of job %s failed", self.spec.job_id)

        self._beats = threading.Thread(target=beat, name="gang-beat", daemon=True)
        self._beats.start()

    def leave(self, terminal: JobEvent | None) -> None:
        """Stop beating and tell the platform how this node's part ended."""
        self._beating.set()
        if self._beats is not None:
            self._beats.join(timeout=5)
        payload = terminal.payload if terminal is not None and terminal.type == "failed" else {}
        try:
            self._send(
                GANG_LEAVE_TASK,
                self._message(
                    error=str(payload.get("error", "")),
                    retryable=bool(payload.get(RETRYABLE_FIELD, False)),
                ),
            )
        except Exception:  # noqa: BLE001 - the platform then finds the node by its beats
            log.exception("job %s: could not tell the platform this node left", self.spec.job_id)
