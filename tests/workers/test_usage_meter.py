"""What an attempt used, measured on the worker and reported in its events (workers/usage.py)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import time

import pytest

from workers.events import ListSink
from workers.jobs import HANDLERS
from workers.protocol import (
    USAGE_FIELD,
    ArtifactRef,
    EventType,
    JobKind,
    JobSpec,
    ProtocolError,
    UsageReport,
)
from workers.runtime import run_attempt
from workers.usage import MeteredStore, UsageMeter


def _spec(store, data: bytes, *, kind=JobKind.INSPECT, heartbeat_seconds: float = 30) -> JobSpec:
    key = f"projects/1/uploads/{hashlib.sha256(data).hexdigest()[:16]}"
    stored = store.put_bytes(key, data)
    return JobSpec(
        job_id=7,
        kind=kind,
        project_id=1,
        attempt=1,
        inputs=(ArtifactRef(key, stored.sha256, stored.size),),
        params={"preview_records": 3},
        output_prefix=f"projects/1/jobs/7/{key[-16:]}/",
        heartbeat_seconds=heartbeat_seconds,
    )


def _burn(seconds: float) -> int:
    """Busy CPU for about `seconds` (a stand-in for a tokenizer worker)."""
    end, count = time.process_time() + seconds, 0
    while time.process_time() < end:
        count += 1
    return count


def test_a_real_inspect_job_reports_what_it_read_and_wrote(local_store):
    data = b"".join(b'{"text": "line %d"}\n' % i for i in range(2000))
    sink = ListSink()
    outcome = run_attempt(_spec(local_store, data), sink, local_store, HANDLERS)
    assert outcome == EventType.FINISHED
    finished = sink.events[-1]
    usage = UsageReport.from_dict(finished.payload[USAGE_FIELD])
    report = next(e for e in sink.events if e.type == EventType.ARTIFACT)
    # The upload was read once; the inspection report (and the completion record) written.
    assert usage.bytes_read >= len(data)
    assert usage.bytes_written >= report.payload["size"]
    assert 0 < usage.wall_seconds < 60 and usage.cpu_seconds >= 0
    assert usage.peak_rss_bytes > 10 * 1024 * 1024  # a Python process is never smaller
    assert (usage.device_type, usage.device_count, usage.gpu_seconds) == ("cpu", 0, 0)
    assert usage.gpu_util == ()
    # Only the heartbeats and the terminal event carry usage.
    assert all(USAGE_FIELD not in e.payload for e in sink.events[:-1] if e.type != "heartbeat")


@pytest.mark.slow
def test_cpu_is_counted_in_child_processes_and_not_before_the_attempt(local_store, monkeypatch):
    _burn(1.0)  # this process's earlier jobs: not the attempt's

    def pooled(ctx):
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(_burn, [0.6, 0.6])
        return {}

    monkeypatch.setitem(HANDLERS, JobKind.INSPECT, pooled)
    sink = ListSink()
    run_attempt(_spec(local_store, b"x"), sink, local_store, HANDLERS)
    usage = UsageReport.from_dict(sink.events[-1].payload[USAGE_FIELD])
    assert usage.cpu_seconds >= 1.1, usage  # the two pool workers' 1.2 s
    assert usage.cpu_seconds < 1.2 + usage.wall_seconds + 0.5  # not the 1 s burnt before


def test_heartbeats_carry_the_usage_so_far(local_store, monkeypatch):
    def slow(ctx):
        _burn(0.3)
        time.sleep(0.5)
        return {}

    monkeypatch.setitem(HANDLERS, JobKind.INSPECT, slow)
    sink = ListSink()
    run_attempt(_spec(local_store, b"y", heartbeat_seconds=0.2), sink, local_store, HANDLERS)
    beats = [e for e in sink.events if e.type == EventType.HEARTBEAT]
    assert beats
    walls = [UsageReport.from_dict(e.payload[USAGE_FIELD]).wall_seconds for e in beats]
    assert walls == sorted(walls)
    final = UsageReport.from_dict(sink.events[-1].payload[USAGE_FIELD])
    assert final.wall_seconds >= walls[-1] and final.cpu_seconds >= 0.25


def test_accounting_can_be_turned_off(local_store, monkeypatch):
    monkeypatch.setenv("WORKER_USAGE_ACCOUNTING", "0")
    sink = ListSink()
    run_attempt(_spec(local_store, b"z\n"), sink, local_store, HANDLERS)
    assert sink.events[-1].type == EventType.FINISHED
    assert all(USAGE_FIELD not in e.payload for e in sink.events)


def test_the_metered_store_counts_streams_and_ranges(local_store):
    meter = UsageMeter()
    store = MeteredStore(local_store, meter)
    store.put_bytes("projects/1/a", b"0123456789")
    with store.open_stream("projects/1/a") as stream:
        assert stream.read() == b"0123456789"
    assert store.get_range("projects/1/a", 2, 3) == b"234"
    assert store.exists("projects/1/a")  # anything else passes through
    report = meter.report()
    assert (report.bytes_written, report.bytes_read) == (10, 13)


def test_gpu_samples_are_reported_once():
    meter = UsageMeter()
    meter._gpu_samples.extend([(1.0, 50.0), (2.0, 60.0)])
    first = meter.report()
    assert first.gpu_util == ((1.0, 50.0), (2.0, 60.0))
    assert meter.report().gpu_util == ()
    # The wire form is JSON and parses back to the same report.
    assert UsageReport.from_dict(json.loads(json.dumps(first.to_dict()))) == first


@pytest.mark.parametrize(
    "change, message",
    [
        ({"cpu_seconds": -1}, "cpu_seconds"),
        ({"wall_seconds": "1"}, "wall_seconds"),
        ({"gpu_util": [[1.0, 120]]}, "above 100"),
        ({"gpu_util": [1.0]}, "gpu_util"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_a_malformed_usage_is_refused_naming_the_field(change, message):
    good = UsageMeter().report().to_dict()
    with pytest.raises(ProtocolError, match=message):
        UsageReport.from_dict({**good, **change})


class _FakeCuda:
    """torch.cuda as a worker with two GPUs sees it, the job allocating on the first."""

    def __init__(self) -> None:
        self.resets: list[int] = []

    def is_initialized(self) -> bool:
        return True

    def device_count(self) -> int:
        return 2

    def max_memory_allocated(self, device: int) -> int:
        return [1 << 20, 0][device]  # since the reset: the job allocated on cuda:0 only

    def reset_peak_memory_stats(self, device: int) -> None:
        self.resets.append(device)

    def get_device_name(self, device: int) -> str:
        return "NVIDIA H200"

    def utilization(self, device: int) -> int:
        return 42


def test_a_cuda_job_reports_its_device_gpu_seconds_and_utilisation(monkeypatch):
    import types

    cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    meter = UsageMeter()
    assert cuda.resets == [0, 1]  # an earlier job's allocations do not count
    time.sleep(0.05)
    meter.sample()
    report = meter.report()
    assert (report.device_type, report.device_count) == ("NVIDIA H200", 1)
    assert report.gpu_seconds == pytest.approx(report.wall_seconds, abs=0.01)
    assert [percent for _, percent in report.gpu_util][-1] == 42.0


def test_a_cpu_job_never_imports_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    report = UsageMeter().report()
    assert "torch" not in sys.modules and report.device_type == "cpu"
