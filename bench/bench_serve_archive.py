"""The inference archive's writer: one replica's Archiver under a steady stream of records.

    .venv/bin/python bench/bench_serve_archive.py              # 10 s at 2,000 records/s, local + S3
    .venv/bin/python bench/bench_serve_archive.py --quick      # 3 s each
    .venv/bin/python bench/bench_serve_archive.py --rate 5000 --no-s3

A producer thread calls `Archiver.record()` at a fixed pace (small chat records, as a
replica's request path would) for `--seconds`, then `close()` flushes. Everything
written is read back through the index entries the sink received, and compared with what
was recorded: the benchmark fails (exit 1) on any lost, duplicated or undecodable record,
or when fewer than 1,000 records/s reached the store (the target, issue 15). Also prints
what record() costs the request path (p50/p99 in microseconds).

Backends: the local store in a temporary folder, and S3 against `python -m moto.server` in
its own process on a free loopback port (as bench_storage.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_storage import moto_server  # noqa: E402
from workers.serve.archive import Archiver, ListIndexSink, decode_object  # noqa: E402
from workers.serve.protocol import ReplicaSpec  # noqa: E402
from workers.storage import LocalObjectStore, ObjectStore, S3ObjectStore  # noqa: E402

TARGET_RECORDS_PER_SECOND = 1000


def spec() -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=uuid.uuid4().hex,
        deployment_id=1,
        deployment="bench/chat",
        project_id=1,
        model="gpt",
        version=1,
        version_id=1,
        task="text-generation",
        files=[],
        subject_key="ab" * 32,
        archive_window_seconds=2.0,
    )


def small_record(n: int) -> dict:
    return {
        "id": uuid.uuid4().hex,
        "time": time.time(),
        "endpoint": "chat.completions",
        "status": "ok",
        "stream": False,
        "caller": {"token_id": 1, "user_id": 1, "username": "bench"},
        "subject": f"user{n % 100}@example.com",
        "request": {
            "messages": [{"role": "user", "content": f"What is {n} plus {n}? Answer briefly."}],
            "max_tokens": 16,
            "temperature": 0.7,
        },
        "response": {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": str(2 * n)}}],
            "usage": {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17},
        },
        "error": None,
        "guardrails": {
            "input": {"pii": {}, "pii_action": "none", "toxicity": 0.0, "toxicity_action": "none"},
            "output": {
                "pii": {},
                "pii_action": "none",
                "toxicity": 0.0,
                "toxicity_action": "none",
            },
        },
        "usage": {"prompt_tokens": 14, "completion_tokens": 3},
        "timings": {
            "queue_ms": 0.4,
            "prefill_ms": 3.1,
            "decode_ms": 9.8,
            "first_token_ms": 3.6,
            "total_ms": 13.4,
        },
    }


@dataclass
class ArchiveResult:
    """One run of `measure`: what was recorded, what came back through the index."""

    recorded: int
    produced_seconds: float  # the producer's time (recording at the offered pace)
    elapsed_seconds: float  # producer plus close(): until everything was stored
    stored: int  # records read back through the index entries
    objects: int
    size: int  # bytes of the objects
    lost: int  # recorded, never read back
    duplicated: int
    dropped: int  # the archiver's own count of records it gave up on
    closed_ok: bool  # close() reported nothing left behind
    record_p50_us: float
    record_p99_us: float
    error: str = ""  # an object that does not match its index, a ranged read that fails

    @property
    def stored_per_second(self) -> float:
        return self.stored / self.elapsed_seconds

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.closed_ok
            and self.lost == 0
            and self.duplicated == 0
            and self.stored == self.recorded
            and self.stored_per_second >= TARGET_RECORDS_PER_SECOND
        )


def measure(store: ObjectStore, rate: float, seconds: float) -> ArchiveResult:
    """Record small records at ``rate`` a second for ``seconds``, close() (what a
    replica's SIGTERM drain does), then read everything back through the index."""
    sink = ListIndexSink()
    archiver = Archiver(store, spec(), sink, node="bench").start()
    count = int(rate * seconds)
    ids: list[str] = []
    costs: list[float] = []

    def produce() -> None:
        start = time.perf_counter()
        for n in range(count):
            target = start + n / rate
            wait = target - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            record = small_record(n)
            ids.append(record["id"])
            before = time.perf_counter()
            archiver.record(record)
            costs.append(time.perf_counter() - before)

    started = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    produced = time.perf_counter() - started
    closed_ok = archiver.close(timeout=60)
    elapsed = time.perf_counter() - started
    stats = archiver.stats()

    # Read everything back through the index: every id once, each member decodable alone.
    error = ""
    read_ids: list[str] = []
    for index in sink.indexes:
        whole = decode_object(store.get_bytes(index.object_key))
        if [r["id"] for r in whole] != [e.id for e in index.records]:
            error = f"{index.object_key} does not match its index"
        read_ids.extend(e.id for e in index.records)
    sample = sink.indexes[0].records[0] if sink.indexes else None
    if sample is not None:
        member = store.get_range(sink.indexes[0].object_key, sample.offset, sample.length)
        if decode_object(member)[0]["id"] != sample.id:
            error = error or "a ranged read did not decode to its record"

    micros = sorted(c * 1e6 for c in costs)
    return ArchiveResult(
        recorded=len(ids),
        produced_seconds=produced,
        elapsed_seconds=elapsed,
        stored=len(read_ids),
        objects=len(sink.indexes),
        size=sum(index.size for index in sink.indexes),
        lost=len(set(ids) - set(read_ids)),
        duplicated=len(read_ids) - len(set(read_ids)),
        dropped=stats["dropped"],
        closed_ok=closed_ok,
        record_p50_us=statistics.median(micros) if micros else 0.0,
        record_p99_us=micros[max(0, int(len(micros) * 0.99) - 1)] if micros else 0.0,
        error=error,
    )


def run(name: str, store: ObjectStore, rate: float, seconds: float) -> bool:
    result = measure(store, rate, seconds)
    print(f"{name}:")
    if result.error:
        print(f"  error: {result.error}")
    print(
        f"  recorded {result.recorded:,} in {result.produced_seconds:.1f} s "
        f"({result.recorded / result.produced_seconds:,.0f}/s offered); "
        f"written {result.stored:,} in {result.objects} objects, {result.size / 1e6:.1f} MB "
        f"({result.size / max(1, result.stored):.0f} B/record)"
    )
    print(
        f"  {result.stored_per_second:,.0f} records/s stored incl. close() "
        f"(ratio to the {TARGET_RECORDS_PER_SECOND:,}/s target: "
        f"{result.stored_per_second / TARGET_RECORDS_PER_SECOND:.2f}x); "
        f"lost {result.lost}, duplicated {result.duplicated}, dropped {result.dropped}"
    )
    print(
        f"  record() cost: p50 {result.record_p50_us:.1f} us, p99 {result.record_p99_us:.1f} us; "
        f"close() flushed everything: {result.closed_ok}"
    )
    return result.ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="records/s offered")
    parser.add_argument("--quick", action="store_true", help="3 s per backend")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) run")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        store = LocalObjectStore(
            folder, "bench", public_base_url="http://127.0.0.1", signing_key="bench"
        )
        store.ensure_bucket()
        ok &= run("local store", store, args.rate, seconds)
    if not args.no_s3:
        with moto_server() as endpoint:
            store = S3ObjectStore(endpoint, "bench", access_key="bench", secret_key="bench-secret")
            store.ensure_bucket()
            ok &= run("S3 (moto server, loopback)", store, args.rate, seconds)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
