"""A worker advertises its queues and devices in a heartbeat of its own."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from workers import registry
from workers.protocol import (
    CONTROL_QUEUE,
    WORKER_HEARTBEAT_TASK,
    DeviceInventory,
    ProtocolError,
    WorkerHeartbeat,
)

ROOT = Path(__file__).resolve().parents[2]
H100 = ("NVIDIA H100 80GB HBM3", 80 * 1024**3)


def fake_nvml(monkeypatch, gpus: list[tuple[str, int]]) -> None:
    """A pynvml with these GPUs (indexes 0..n-1)."""
    module = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda index: gpus[index],
        nvmlDeviceGetName=lambda handle: handle[0],
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(total=handle[1]),
    )
    monkeypatch.setitem(sys.modules, "pynvml", module)


def test_the_gpus_are_read_with_nvml_and_limited_by_cuda_visible_devices(monkeypatch):
    fake_nvml(monkeypatch, [H100, H100, ("NVIDIA A100-SXM4-40GB", 40 * 1024**3), H100])
    monkeypatch.delenv("WORKER_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    devices = registry.detect_devices()
    assert (devices.gpus, devices.gpu_type) == (4, H100[0])
    assert devices.gpu_memory_bytes == 40 * 1024**3  # the smallest decides what fits
    assert devices.cpus >= 1

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert registry.detect_devices().gpus == 2
    assert registry.detect_devices().gpu_memory_bytes == H100[1]


def test_without_nvml_a_worker_offers_its_cpus_only(monkeypatch):
    def no_driver():
        raise RuntimeError("NVML Shared Library Not Found")

    module = types.SimpleNamespace(nvmlInit=no_driver)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("WORKER_GPUS", raising=False)

    devices = registry.detect_devices()
    assert (devices.gpus, devices.gpu_type, devices.gpu_memory_bytes) == (0, "", 0)
    assert devices.cpus == len(os.sched_getaffinity(0))


def test_worker_gpus_overrides_the_count(monkeypatch):
    monkeypatch.setenv("WORKER_GPUS", "2")
    assert registry.detect_devices([H100] * 8).gpus == 2  # part of a machine
    assert registry.detect_devices([]).gpus == 2  # taken on trust: no NVML here
    monkeypatch.setenv("WORKER_GPUS", "two")
    with pytest.raises(Exception, match="WORKER_GPUS='two' is not an integer"):
        registry.detect_devices([])


class FakeApp:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, list, dict]] = []
        self.fail = fail

    def send_task(self, name, args=None, **options):
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, args, options))


def test_the_heartbeat_names_the_worker_its_job_queues_and_devices(monkeypatch):
    monkeypatch.setenv("WORKER_HEARTBEAT_SECONDS", "7")
    devices = DeviceInventory(gpus=8, gpu_type=H100[0], gpu_memory_bytes=H100[1], cpus=96)
    app = FakeApp()
    sender = registry.HeartbeatSender(app, "gpu@node-1", ["gpu", "celery"], devices=devices)

    assert sender.beat()
    (name, (message,), options) = app.sent[0]
    assert name == WORKER_HEARTBEAT_TASK and options["queue"] == CONTROL_QUEUE
    parsed = WorkerHeartbeat.from_dict(json.loads(json.dumps(message)))
    assert (parsed.name, parsed.queues, parsed.devices) == ("gpu@node-1", ("gpu",), devices)
    assert parsed.heartbeat_seconds == 7 and not parsed.leaving
    assert not registry.HeartbeatSender(FakeApp(fail=True), "w", ["gpu"], devices=devices).beat()


def test_a_heartbeat_with_a_bad_field_is_refused():
    good = WorkerHeartbeat(
        name="cpu@x",
        queues=("cpu",),
        devices=DeviceInventory(gpus=0, gpu_type="", gpu_memory_bytes=0, cpus=2),
        heartbeat_seconds=5.0,
        started_at=time.time(),
    ).to_dict()
    for bad, problem in [
        ({**good, "queues": [""]}, "queues"),
        ({**good, "heartbeat_seconds": 0}, "heartbeat_seconds"),
        ({**good, "devices": {**good["devices"], "cpus": True}}, "cpus"),
        ({**good, "colour": "red"}, "unknown field"),
    ]:
        with pytest.raises(ProtocolError, match=problem):
            WorkerHeartbeat.from_dict(bad)


def _heartbeats(redis_url: str) -> list[dict]:
    """The heartbeats waiting in the control queue, oldest first."""
    import redis

    client = redis.Redis.from_url(redis_url)
    found = []
    # kombu pushes on the left and pops on the right: the list is newest first.
    for raw in reversed(client.lrange(CONTROL_QUEUE, 0, -1)):
        message = json.loads(raw)
        if message["headers"].get("task") == WORKER_HEARTBEAT_TASK:
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append(args[0])
    return found


@pytest.mark.slow
def test_a_real_worker_process_beats_from_start_to_shutdown(tmp_path):
    from tests.redisserver import PrivateRedis

    redis = PrivateRedis(tmp_path).start()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        CELERY_BROKER_URL=redis.url,
        CONTROLPLANE_DATA_DIR=str(tmp_path / "data"),
        WORKER_HEARTBEAT_SECONDS="1",
        WORKER_GPUS="",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "cpu"]
        + ["--pool", "solo", "-n", f"beats-{os.getpid()}@test", "--loglevel", "INFO"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_heartbeats(redis.url)) < 2 and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()
            time.sleep(0.5)
        beats = _heartbeats(redis.url)
        assert len(beats) >= 2, log.read_text()
        first = WorkerHeartbeat.from_dict(beats[0])
        assert first.name == f"beats-{os.getpid()}@test" and first.queues == ("cpu",)
        assert first.devices.cpus >= 1 and first.heartbeat_seconds == 1
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert WorkerHeartbeat.from_dict(_heartbeats(redis.url)[-1]).leaving
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        redis.stop()
