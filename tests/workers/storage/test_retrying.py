"""The retrying store rides out transient outages and fails fast on everything else."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import pytest

from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY
from workers.storage import ObjectNotFoundError, S3ObjectStore, StorageError
from workers.storage.retrying import RetryingObjectStore, StorageUnavailableError, is_transient


def _refused() -> StorageError:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as cause:
        try:
            raise StorageError("stat at S3 endpoint 127.0.0.1:9 failed") from cause
        except StorageError as error:
            return error


class Blips:
    """Wraps a store; the next `failures` calls of the named methods fail as a network blip."""

    def __init__(self, inner, failures: int = 0, methods=("put_stream", "exists", "stat")):
        self.inner, self.failures, self.methods = inner, failures, set(methods)
        self.backend, self.bucket = inner.backend, inner.bucket
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.methods and self.failures > 0:
                self.failures -= 1
                raise _refused()
            return attribute(*args, **kwargs)

        return call


def _retrying(inner, patience: float = 5.0) -> RetryingObjectStore:
    return RetryingObjectStore(
        inner, patience_seconds=patience, first_delay_seconds=0.01, max_delay_seconds=0.05
    )


def test_transient_errors_are_retried_until_they_pass(local_store):
    blips = Blips(local_store, failures=3)
    store = _retrying(blips)
    stored = store.put_bytes("projects/1/jobs/2/a", b"payload")
    assert stored.sha256 == hashlib.sha256(b"payload").hexdigest()
    assert (
        blips.calls["put_stream"] == 4
        and local_store.get_bytes("projects/1/jobs/2/a") == b"payload"
    )


def test_a_missing_object_is_not_retried(local_store):
    blips = Blips(local_store)
    store = _retrying(blips)
    started = time.monotonic()
    with pytest.raises(ObjectNotFoundError):
        store.stat("projects/1/missing")
    assert blips.calls["stat"] == 1 and time.monotonic() - started < 1


def test_a_checksum_mismatch_is_not_retried(local_store, tmp_path):
    from workers.events import ListSink
    from workers.protocol import JobKind, JobSpec
    from workers.runtime import JobContext, JobFailed

    local_store.put_bytes("projects/1/uploads/u", b"data")
    blips = Blips(local_store)
    spec = JobSpec(1, JobKind.INSPECT, 1, 1, (), {}, "projects/1/jobs/1/attempt-1/", 60)
    ctx = JobContext(spec, ListSink(), _retrying(blips))
    with pytest.raises(JobFailed, match="sha256"):
        ctx.download("projects/1/uploads/u", tmp_path / "copy", "0" * 64)
    assert blips.calls["open_stream"] == 1


def test_patience_runs_out_with_an_infrastructure_error(local_store):
    store = _retrying(Blips(local_store, failures=10**6), patience=0.3)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as raised:
        store.exists("projects/1/x")
    assert 0.3 <= time.monotonic() - started < 2
    assert is_transient(raised.value) and "kept failing" in str(raised.value)


def test_a_put_whose_answer_was_lost_is_recognised_by_its_content(local_store):
    class LostAnswer(Blips):
        def put_stream(self, key, stream, **kwargs):
            self.calls["put_stream"] = self.calls.get("put_stream", 0) + 1
            stored = self.inner.put_stream(key, stream, **kwargs)
            if self.calls["put_stream"] == 1:
                raise _refused()  # stored, but the response never came back
            return stored

    store = _retrying(LostAnswer(local_store))
    stored = store.put_stream("projects/1/jobs/2/b", io.BytesIO(b"weights"), length=7)
    assert stored.sha256 == hashlib.sha256(b"weights").hexdigest() and stored.size == 7


def test_a_download_that_breaks_midway_goes_on_where_it_stopped(local_store):
    data = bytes(range(256)) * 4096  # 1 MiB
    local_store.put_bytes("projects/1/big", data)

    class BreaksOnce:
        def __init__(self, stream):
            self.stream, self.read_bytes = stream, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def read(self, size=-1):
            if self.read_bytes >= 300_000 and not broken:
                broken.append(True)
                raise _refused()
            chunk = self.stream.read(size)
            self.read_bytes += len(chunk)
            return chunk

    broken: list[bool] = []

    class Breaking(Blips):
        def open_stream(self, key, **kwargs):
            self.calls["open_stream"] = self.calls.get("open_stream", 0) + 1
            return BreaksOnce(self.inner.open_stream(key, **kwargs))

    blips = Breaking(local_store)
    chunks = list(_retrying(blips).iter_chunks("projects/1/big", chunk_size=100_000))
    assert b"".join(chunks) == data and blips.calls["open_stream"] == 2


@pytest.fixture
def restartable_s3():
    """A moto S3 server this test stops and starts on the same port (objects survive)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    state = {"server": server}

    def outage(seconds: float) -> threading.Thread:
        def run() -> None:
            state["server"].stop()
            time.sleep(seconds)
            state["server"] = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
            state["server"].start()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    yield f"{host}:{port}", outage
    state["server"].stop()


@pytest.mark.slow
def test_a_20_second_s3_outage_fails_no_operation(restartable_s3):
    endpoint, outage = restartable_s3
    inner = S3ObjectStore(
        endpoint, "retry-outage", access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION
    )
    store = RetryingObjectStore(inner, patience_seconds=60)
    store.ensure_bucket()
    store.put_bytes("projects/1/jobs/1/before", b"x" * 1000)
    plug = outage(20)
    time.sleep(0.5)
    with pytest.raises(StorageError):
        inner.exists("projects/1/jobs/1/before")  # the store alone gives up at once
    results: dict[str, object] = {}

    def run(name, call):
        try:
            results[name] = call()
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            results[name] = error

    operations = {
        "put": lambda: store.put_bytes("projects/1/jobs/1/during", b"y" * 2000).size,
        "exists": lambda: store.exists("projects/1/jobs/1/before"),
        "get": lambda: len(b"".join(store.iter_chunks("projects/1/jobs/1/before"))),
        "list": lambda: [info.key for info in store.list("projects/1/jobs/1/")],
    }
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=item) for item in operations.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    plug.join()
    assert time.monotonic() - started >= 15  # they did wait for the store to come back
    assert results["put"] == 2000 and results["exists"] is True and results["get"] == 1000
    assert "projects/1/jobs/1/before" in results["list"]
    assert store.get_bytes("projects/1/jobs/1/during") == b"y" * 2000


@pytest.mark.slow
def test_a_job_runs_through_a_20_second_s3_outage(restartable_s3):
    """Stop checks and checkpoint uploads wait for the store instead of failing the job."""
    import json

    from workers.events import ListSink
    from workers.protocol import EventType, JobKind, JobSpec, completion_record_key
    from workers.runtime import run_attempt

    endpoint, outage = restartable_s3
    inner = S3ObjectStore(
        endpoint, "job-outage", access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION
    )
    store = RetryingObjectStore(inner, patience_seconds=60, max_delay_seconds=2)
    store.ensure_bucket()
    spec = JobSpec(8, JobKind.INSPECT, 1, 1, (), {}, "projects/1/jobs/8/attempt-1/", 1.0)

    def train(ctx):
        ctx.check_stop()
        plug = outage(20)
        started, step = time.monotonic(), 0
        while time.monotonic() - started < 24:
            step += 1
            ctx.metric(step, loss=1.0 / step)
            ctx.check_stop()
            if step % 10 == 0:
                key = ctx.output_key("checkpoints", f"step_{step:06d}.pt")
                stored = ctx.store.put_bytes(key, b"weights %d" % step)
                ctx.checkpoint(step=step, key=key, sha256=stored.sha256, size=stored.size)
            time.sleep(0.2)
        plug.join()
        return {"steps": step}

    sink = ListSink()
    assert run_attempt(spec, sink, store, {JobKind.INSPECT: train}) == EventType.FINISHED
    checkpoints = [e for e in sink.events if e.type == EventType.CHECKPOINT]
    assert checkpoints and all(store.exists(e.payload["key"]) for e in checkpoints)
    record = json.loads(store.get_bytes(completion_record_key(8, 1)))
    assert record["finished"] == sink.events[-1].to_dict()
    assert sum(e.type == EventType.HEARTBEAT for e in sink.events) >= 15  # the lease held
