"""The inspect job handler, run outside Celery on a local object store (no Django, no broker)."""

from __future__ import annotations

import gzip
import hashlib

from workers.events import ListSink
from workers.jobs import HANDLERS
from workers.protocol import ArtifactRef, EventType, JobKind, JobSpec, cancel_marker_key
from workers.runtime import run_attempt


def _run(store, data: bytes, **params):
    # Stored objects are immutable: every run gets its own upload key.
    key = f"projects/1/uploads/{hashlib.sha256(data).hexdigest()[:16]}"
    stored = store.put_bytes(key, data)
    spec = JobSpec(
        job_id=7,
        kind=JobKind.INSPECT,
        project_id=1,
        attempt=1,
        inputs=(ArtifactRef(key, stored.sha256, stored.size),),
        params={"preview_records": 3, **params},
        output_prefix=f"projects/1/jobs/7/{key[-16:]}/",
        heartbeat_seconds=30,
    )
    sink = ListSink()
    outcome = run_attempt(spec, sink, store, HANDLERS)
    return outcome, sink.events


def test_jsonl_is_recognised_with_its_first_records(store):
    data = b"".join(b'{"text": "hello %d"}\n' % i for i in range(10))
    outcome, events = _run(store, data)
    assert outcome == EventType.FINISHED
    result = events[-1].payload["result"]
    assert result["format"] == "jsonl" and result["line_count"] == 10
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert [r["text"] for r in result["records"]] == ["hello 0", "hello 1", "hello 2"]
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[0].type == EventType.STARTED and any(e.type == EventType.ARTIFACT for e in events)


def test_csv_and_plain_text(store):
    _, events = _run(store, b"name,age\nann,31\nbob,42\n")
    assert events[-1].payload["result"]["format"] == "csv"
    assert events[-1].payload["result"]["records"][0] == {"name": "ann", "age": "31"}
    _, events = _run(
        store,
        b"To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    )
    result = events[-1].payload["result"]
    assert result["format"] == "text" and result["line_count"] == 2


def test_gzip_content_is_counted_decompressed(store):
    data = gzip.compress(b"line\n" * 500)
    _, events = _run(store, data)
    result = events[-1].payload["result"]
    assert (
        result["compression"] == "gzip"
        and result["line_count"] == 500
        and result["size"] == len(data)
    )


def test_corrupt_gzip_fails_with_a_reason(store):
    _, events = _run(store, b"\x1f\x8b\x08\x00garbage-not-deflate")
    assert (
        events[-1].type == EventType.FAILED and "does not decompress" in events[-1].payload["error"]
    )


def test_binary_is_not_previewed(store):
    _, events = _run(store, b"\x00\x01\x02\xff" * 100)
    assert events[-1].payload["result"]["format"] == "binary"


def test_changed_object_fails_the_job(store):
    key = "projects/1/uploads/x"
    store.put_bytes(key, b"abc")
    spec = JobSpec(
        job_id=8,
        kind=JobKind.INSPECT,
        project_id=1,
        attempt=1,
        inputs=(ArtifactRef(key, "0" * 64, 3),),
        params={"preview_records": 5},  # as the platform fills it in
        output_prefix="projects/1/jobs/8/",
        heartbeat_seconds=30,
    )
    sink = ListSink()
    assert run_attempt(spec, sink, store, HANDLERS) == EventType.FAILED
    assert "does not match its upload record" in sink.events[-1].payload["error"]


def test_a_cancelled_job_does_no_work(store):
    store.put_bytes(cancel_marker_key(7), b"cancel")
    outcome, events = _run(store, b"a\n")
    assert outcome == EventType.CANCELLED and [e.type for e in events] == [EventType.CANCELLED]
