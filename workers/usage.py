"""What one job attempt uses, measured on the worker: the figures of a `UsageReport`.

A `UsageMeter` starts with the attempt and is read at every heartbeat and at the terminal
event (workers/runtime.py puts the report in their payloads; workers/protocol.py defines
it). A prefork worker process runs many jobs one after the other, so every figure is a
difference from the attempt's start, never a process total:

- CPU seconds: ``getrusage`` of the process and of its reaped children (the data pipeline
  and the tokenizer use process pools), plus the live children's own CPU time (psutil),
  each minus what it was at the start;
- peak RSS: the process tree's resident memory, sampled (ru_maxrss would keep a previous
  job's peak for the life of the process) every few seconds and at each report;
- device: read from ``torch.cuda`` only when the job imported torch and initialised CUDA
  (the meter never imports torch): the name of the first device it allocated on and how
  many it did; "cpu" and 0 otherwise. GPU seconds are the attempt's wall time times the
  GPUs held;
- GPU utilisation: sampled with the memory by the same thread (``torch.cuda.utilization``,
  which reads NVML); each report carries the samples taken since the previous one;
- bytes read and written in the object store: counted by `MeteredStore`, the store the
  attempt's context hands out.

Cheap by construction: one thread waking every few seconds for a /proc read (and an NVML
call on GPU workers); a report is two ``getrusage`` calls and one process-tree walk.
``WORKER_USAGE_ACCOUNTING=0`` turns the meter off (events then carry no usage).
"""

from __future__ import annotations

import io
import logging
import os
import resource
import sys
import threading
import time
from collections import deque
from typing import Any, BinaryIO

import psutil

from workers.protocol import UsageReport

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
# Samples a report carries at most: the newest ones (an hour at the default interval)
# when the reports stopped for a while (a broker outage).
MAX_SAMPLES_PER_REPORT = 720

ProcessKey = tuple[int, float]  # (pid, create time): a pid alone may be reused


class UsageMeter:
    """The running figures of one attempt; thread-safe (the heartbeat thread reports)."""

    def __init__(self, *, sample_seconds: float = SAMPLE_SECONDS) -> None:
        self._sample_seconds = sample_seconds
        self._lock = threading.Lock()
        self._process = psutil.Process()
        self._started = time.monotonic()
        self._cpu_at_start = _reaped_cpu_seconds()
        self._children_at_start = _live_children_cpu(self._process)
        self._cpu_reported = 0.0
        self._peak_rss = 0
        self._devices: list[int] = []
        self._device_type = "cpu"
        self._gpu_samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES_PER_REPORT)
        self._gpu_sampling_broken = False
        self.bytes_read = 0
        self.bytes_written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _reset_cuda_peaks()
        self.sample()

    # counting ---------------------------------------------------------------------
    def count_read(self, size: int) -> None:
        with self._lock:
            self.bytes_read += size

    def count_written(self, size: int) -> None:
        with self._lock:
            self.bytes_written += size

    # sampling ---------------------------------------------------------------------
    def start(self) -> None:
        """Sample in the background until `stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._sample_seconds):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample must never touch the job
                log.exception("usage sample failed")

    def sample(self) -> None:
        """One memory sample of the process tree, and one of GPU utilisation when in use."""
        rss = _tree_rss(self._process)
        devices = self._cuda_devices()
        percent = self._gpu_percent(devices) if devices else None
        with self._lock:
            self._peak_rss = max(self._peak_rss, rss)
            if percent is not None:
                self._gpu_samples.append((round(time.time(), 3), percent))

    def _cuda_devices(self) -> list[int]:
        cuda = _initialised_cuda()
        if cuda is None:
            return self._devices
        try:
            used = [i for i in range(cuda.device_count()) if cuda.max_memory_allocated(i) > 0]
            if len(used) > len(self._devices):
                self._devices = used
                self._device_type = cuda.get_device_name(used[0])[:100]
        except Exception:  # noqa: BLE001 - a driver hiccup: keep what we knew
            log.debug("cannot read the CUDA devices", exc_info=True)
        return self._devices

    def _gpu_percent(self, devices: list[int]) -> float | None:
        if self._gpu_sampling_broken:
            return None
        cuda = _initialised_cuda()
        try:
            values = [float(cuda.utilization(device)) for device in devices]
        except Exception as error:  # noqa: BLE001 - no NVML here: the other figures stand
            self._gpu_sampling_broken = True
            log.warning("GPU utilisation is not measured on this worker: %s", error)
            return None
        return round(sum(values) / len(values), 1)

    # reporting --------------------------------------------------------------------
    def report(self) -> UsageReport:
        """The figures so far; the GPU samples in it are not reported again."""
        self._sample_memory()
        wall = time.monotonic() - self._started
        cpu = self._cpu_seconds()
        with self._lock:
            # Never less than before: a child reaped between the two reads is counted
            # late, not twice (the platform keeps the maximum of each figure anyway).
            self._cpu_reported = max(self._cpu_reported, cpu)
            samples = tuple(self._gpu_samples)
            self._gpu_samples.clear()
            return UsageReport(
                wall_seconds=round(wall, 3),
                cpu_seconds=round(self._cpu_reported, 3),
                peak_rss_bytes=self._peak_rss,
                device_type=self._device_type,
                device_count=len(self._devices),
                gpu_seconds=round(wall * len(self._devices), 3),
                gpu_util=samples,
                bytes_read=self.bytes_read,
                bytes_written=self.bytes_written,
            )

    def _sample_memory(self) -> None:
        rss = _tree_rss(self._process)
        self._cuda_devices()
        with self._lock:
            self._peak_rss = max(self._peak_rss, rss)

    def _cpu_seconds(self) -> float:
        # Reaped first, live second: a child that ends between the reads is missed once
        # (and counted by the next report), never counted in both.
        reaped = _reaped_cpu_seconds() - self._cpu_at_start
        live = sum(
            seconds - self._children_at_start.get(key, 0.0)
            for key, seconds in _live_children_cpu(self._process).items()
        )
        return max(0.0, reaped + live)


def _reaped_cpu_seconds() -> float:
    """User + system time of this process and of its children that ended (and were waited)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _live_children_cpu(process: psutil.Process) -> dict[ProcessKey, float]:
    seconds: dict[ProcessKey, float] = {}
    for child in _children(process):
        try:
            with child.oneshot():
                times = child.cpu_times()
                key = (child.pid, child.create_time())
        except psutil.Error:
            continue  # ended meanwhile: its time is in RUSAGE_CHILDREN from now on
        seconds[key] = times.user + times.system + times.children_user + times.children_system
    return seconds


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *_children(process)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def _children(process: psutil.Process) -> list[psutil.Process]:
    """The process's descendants. From /proc/<pid>/task/<tid>/children where the kernel
    has it: a few small reads, where psutil's walk reads the stat file of every process on
    the machine (a millisecond of CPU at each sample on a busy host)."""
    try:
        pids = _descendant_pids(process.pid)
    except OSError:
        try:
            return process.children(recursive=True)
        except psutil.Error:
            return []
    children = []
    for pid in pids:
        try:
            children.append(psutil.Process(pid))
        except psutil.Error:
            continue  # ended meanwhile
    return children


def _descendant_pids(pid: int) -> list[int]:
    """OSError where /proc has no children files (not Linux, or an old kernel)."""
    found: list[int] = []
    parents = [pid]
    while parents:
        parent = parents.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            if parent == pid:
                raise
            continue  # a child that ended meanwhile
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", "rb") as listing:
                    kids = [int(kid) for kid in listing.read().split()]
            except FileNotFoundError:
                if parent == pid and not os.path.exists(f"/proc/{parent}/task/{task}"):
                    continue  # the thread ended meanwhile
                if parent == pid:
                    raise
                continue
            found.extend(kids)
            parents.extend(kids)
    return found


def _initialised_cuda() -> Any:
    """``torch.cuda`` if this process already imported torch and used CUDA, else None.

    Never imports torch: a CPU job that does not need it must not pay for it.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_initialized() else None
    except Exception:  # noqa: BLE001 - a half-imported torch
        return None


def _reset_cuda_peaks() -> None:
    """A previous job of this process may have allocated on the GPUs: start from zero, so
    "the devices this attempt allocated on" means this attempt's."""
    cuda = _initialised_cuda()
    if cuda is None:
        return
    try:
        for device in range(cuda.device_count()):
            cuda.reset_peak_memory_stats(device)
    except Exception:  # noqa: BLE001
        log.debug("cannot reset the CUDA memory peaks", exc_info=True)


class MeteredStore:
    """The attempt's object store, counting the bytes that travel through it.

    Everything else is the wrapped store's (``__getattr__``); a server-side `copy` moves
    no bytes through the worker and is not counted.
    """

    def __init__(self, store: Any, meter: UsageMeter) -> None:
        self._store = store
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def put_stream(self, key: str, stream: Any, **kwargs: Any) -> Any:
        stored = self._store.put_stream(key, stream, **kwargs)
        self._meter.count_written(stored.size)
        return stored

    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> Any:
        stored = self._store.put_bytes(key, data, **kwargs)
        self._meter.count_written(stored.size)
        return stored

    def iter_chunks(self, key: str, *args: Any, **kwargs: Any):
        for chunk in self._store.iter_chunks(key, *args, **kwargs):
            self._meter.count_read(len(chunk))
            yield chunk

    def get_bytes(self, key: str, **kwargs: Any) -> bytes:
        data = self._store.get_bytes(key, **kwargs)
        self._meter.count_read(len(data))
        return data

    def get_range(self, key: str, offset: int, length: int, **kwargs: Any) -> bytes:
        data = self._store.get_range(key, offset, length, **kwargs)
        self._meter.count_read(len(data))
        return data

    def open_stream(self, key: str, **kwargs: Any) -> BinaryIO:
        return _CountingReader(self._store.open_stream(key, **kwargs), self._meter)

    def get_version(self, key: str, version_id: str) -> BinaryIO:
        return _CountingReader(self._store.get_version(key, version_id), self._meter)


class _CountingReader(io.RawIOBase):
    """A stream read from the store, counting what the reader took."""

    def __init__(self, stream: BinaryIO, meter: UsageMeter) -> None:
        super().__init__()
        self._stream, self._meter = stream, meter

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._meter.count_read(len(data))
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()
