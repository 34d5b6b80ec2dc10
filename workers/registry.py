"""The worker's own heartbeat: it tells the platform which queues it consumes and what
devices it has, from start to shutdown, so that a job is sent only where it can run.

    WORKER_HEARTBEAT_SECONDS=15   how often (the platform counts a worker lost after
                                  a few missed ones: WORKER_STALE_HEARTBEATS)
    WORKER_GPUS=4                 advertise this many GPUs instead of those detected
                                  (a worker given part of a machine)

Devices are read with NVML (`nvidia-ml-py`), never with ``torch.cuda``: initialising CUDA
in the Celery parent process would break the children it forks, and the count must not
wait for torch to import. CUDA_VISIBLE_DEVICES limits what is counted, as it limits what
the worker's jobs see. Without NVML or a driver the worker advertises 0 GPUs and its CPUs.

The heartbeat goes to the control queue like the jobs' events (fire and forget: a lost
one is followed by the next); a broker outage only delays it. It starts when the worker
is ready (Celery's ``worker_ready`` signal, with the queues it consumes) and a last one
marked ``leaving`` goes out at a clean shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from workers.config import env_int
from workers.protocol import CONTROL_QUEUE, WORKER_HEARTBEAT_TASK, DeviceInventory, WorkerHeartbeat

log = logging.getLogger(__name__)

JOB_QUEUES = ("cpu", "gpu")


def _visible(indexes: list[int]) -> list[int]:
    """The GPU indexes CUDA_VISIBLE_DEVICES leaves to this worker's jobs."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return indexes
    chosen = []
    for item in raw.split(","):
        item = item.strip()
        if item.isdigit() and int(item) in indexes:
            chosen.append(int(item))
        elif item:  # a UUID or MIG name: counted, NVML's index order is not theirs
            chosen.append(-1)
    return chosen[: len(indexes)]


def nvml_gpus() -> list[tuple[str, int]]:
    """[(name, total memory in bytes)] of the GPUs this worker may use; [] without NVML."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU: a CPU worker
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for index in _visible(list(range(count))):
            handle = pynvml.nvmlDeviceGetHandleByIndex(max(index, 0))
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append((name[:100], int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return gpus
    except Exception as error:  # noqa: BLE001 - a driver error must not stop the worker
        log.warning("reading the GPUs with NVML failed: %s", error)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def detect_devices(gpus: list[tuple[str, int]] | None = None) -> DeviceInventory:
    """This machine's devices; WORKER_GPUS overrides the count (at most those found,
    unless none were found: then it is taken on trust, e.g. a test's fake gpu worker)."""
    found = nvml_gpus() if gpus is None else gpus
    wanted = os.environ.get("WORKER_GPUS")
    if wanted not in (None, ""):
        count = env_int("WORKER_GPUS", 0, minimum=0)
        found = found[:count] if found else [("unknown", 0)] * count
    return DeviceInventory(
        gpus=len(found),
        gpu_type=found[0][0] if found else "",
        gpu_memory_bytes=min(memory for _, memory in found) if found else 0,
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    )


def heartbeat_seconds() -> int:
    return env_int("WORKER_HEARTBEAT_SECONDS", 15, minimum=1)


class HeartbeatSender:
    """A daemon thread sending this worker's heartbeat every `interval` seconds."""

    def __init__(
        self, app: Any, name: str, queues: list[str], *, devices: DeviceInventory | None = None
    ) -> None:
        self.app = app
        self.name = name
        self.queues = [q for q in queues if q in JOB_QUEUES]
        self.devices = devices or detect_devices()
        self.interval = float(heartbeat_seconds())
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, *, leaving: bool = False) -> bool:
        message = WorkerHeartbeat(
            name=self.name,
            queues=tuple(self.queues),
            devices=self.devices,
            heartbeat_seconds=self.interval,
            started_at=self.started_at,
            leaving=leaving,
        )
        try:
            self.app.send_task(
                WORKER_HEARTBEAT_TASK,
                args=[message.to_dict()],
                queue=CONTROL_QUEUE,
                retry=False,
                # A heartbeat older than a few intervals says nothing; don't apply it late.
                expires=3 * self.interval,
            )
        except Exception as error:  # noqa: BLE001 - the broker is away: the next one goes
            log.warning("worker heartbeat not sent: %s", error)
            return False
        return True

    def start(self) -> None:
        log.info(
            "worker %s on %s: %d GPU(s) %s, %d CPU(s)",
            self.name,
            ",".join(self.queues),
            self.devices.gpus,
            self.devices.gpu_type or "",
            self.devices.cpus,
        )
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.beat(leaving=True)


_sender: HeartbeatSender | None = None


def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Celery's worker_ready: `sender` is the consumer, which knows the queues."""
    global _sender
    if sender is None or _sender is not None:
        return
    queues = [queue.name for queue in sender.task_consumer.queues]
    if not any(queue in JOB_QUEUES for queue in queues):
        return  # not a job worker (e.g. a serve node's app)
    _sender = HeartbeatSender(sender.app, sender.hostname, queues)
    _sender.start()


def on_worker_shutdown(**_: Any) -> None:
    global _sender
    if _sender is not None:
        _sender.stop()
        _sender = None


def connect() -> None:
    from celery.signals import worker_ready, worker_shutdown

    worker_ready.connect(on_worker_ready, weak=False)
    worker_shutdown.connect(on_worker_shutdown, weak=False)
