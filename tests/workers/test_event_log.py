"""A running attempt re-sends the events the platform asks for, and leaves a completion record.

The platform asks by writing {"seqs": [...]} under `resend_request_prefix`; it reads the
record at `completion_record_key` before it declares an attempt lost.
"""

from __future__ import annotations

import json

from workers.events import EventLog, ListSink
from workers.protocol import (
    EventType,
    JobEvent,
    JobKind,
    JobSpec,
    completion_record_key,
    resend_request_prefix,
)
from workers.runtime import JobContext, run_attempt


def _spec(job_id: int = 9, attempt: int = 1) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        kind=JobKind.INSPECT,
        project_id=3,
        attempt=attempt,
        inputs=(),
        params={"preview_records": 5},  # as the platform fills it in
        output_prefix=f"projects/3/jobs/{job_id}/attempt-{attempt}/",
        heartbeat_seconds=60,
    )


def _ask(store, spec: JobSpec, name: str, seqs) -> None:
    key = resend_request_prefix(spec.job_id, spec.attempt) + name
    store.put_bytes(key, json.dumps({"seqs": seqs}).encode())


def test_requested_events_are_sent_again_unchanged_and_once_per_request(local_store):
    spec, sink = _spec(), ListSink()
    ctx = JobContext(spec, sink, local_store, stop_check_seconds=0)
    for step in range(5):
        ctx.metric(step, loss=1.0 / (step + 1))
    first = {event.seq: event.to_dict() for event in sink.events}
    _ask(local_store, spec, "gap-1", [1, 3])
    assert not ctx.should_stop()  # the stop check also answers the request
    assert [event.to_dict() for event in sink.events[5:]] == [first[1], first[3]]
    assert not ctx.should_stop()
    assert len(sink.events) == 7  # one request, one answer
    _ask(local_store, spec, "gap-2", [0])
    ctx.check_stop()
    assert sink.events[-1].to_dict() == first[0]


def test_seqs_the_log_no_longer_holds_are_reported_not_invented(local_store):
    spec, sink = _spec(), ListSink()
    ctx = JobContext(spec, sink, local_store, stop_check_seconds=0, event_log=EventLog(10))
    ctx.checkpoint(step=0, key="projects/3/jobs/9/attempt-1/checkpoints/a", sha256="0" * 64, size=1)
    for step in range(30):
        ctx.metric(step, loss=1.0)
    _ask(local_store, spec, "gap", [0, 1, 2, 3, 30, 31, 5000])
    ctx.check_stop()
    resent = sink.events[31:]
    assert [event.seq for event in resent[:2]] == [0, 30]  # the checkpoint is always kept
    assert resent[0].to_dict() == sink.events[0].to_dict()
    assert resent[-1].type == EventType.LOG and "1-3" in resent[-1].payload["message"]


def test_a_malformed_request_is_skipped(local_store):
    spec, sink = _spec(), ListSink()
    ctx = JobContext(spec, sink, local_store, stop_check_seconds=0)
    ctx.log("hello")
    local_store.put_bytes(resend_request_prefix(9, 1) + "bad", b"{not json")
    _ask(local_store, spec, "words", ["1"])
    assert not ctx.should_stop() and len(sink.events) == 1


def _publishing_job(ctx):
    for step in range(3):
        ctx.metric(step, loss=1.0)
        key = ctx.output_key("checkpoints", f"step-{step}")
        stored = ctx.store.put_bytes(key, b"weights %d" % step)
        ctx.checkpoint(step=step, key=key, sha256=stored.sha256, size=stored.size)
    stored = ctx.store.put_bytes(ctx.output_key("model.bin"), b"model")
    ctx.artifact(name="model.bin", key=stored.key, sha256=stored.sha256, size=stored.size)
    return {"steps": 3}


class RecordCheckingSink(ListSink):
    """Checks, when `finished` is sent, that the completion record is already stored."""

    def __init__(self, store) -> None:
        super().__init__()
        self.store = store
        self.record_at_finish = None

    def send(self, event: JobEvent) -> None:
        if event.type == EventType.FINISHED:
            key = completion_record_key(event.job_id, event.attempt)
            self.record_at_finish = json.loads(self.store.get_bytes(key))
        super().send(event)


def test_the_completion_record_is_written_before_finished_and_matches_it(local_store):
    spec = _spec(job_id=11, attempt=2)
    sink = RecordCheckingSink(local_store)
    outcome = run_attempt(spec, sink, local_store, {JobKind.INSPECT: _publishing_job})
    assert outcome == EventType.FINISHED
    record = sink.record_at_finish
    assert record is not None, "finished went out before the completion record existed"
    finished = sink.events[-1]
    assert record["finished"] == finished.to_dict()
    assert JobEvent.from_dict(record["finished"]).payload["result"] == {"steps": 3}
    published = [e.to_dict() for e in sink.events if e.type in ("artifact", "checkpoint")]
    assert record["events"] == published and len(published) == 4
    assert [e["seq"] for e in record["events"]] == sorted(e["seq"] for e in record["events"])


def test_no_completion_record_for_a_failed_attempt(local_store):
    def broken(ctx):
        raise ValueError("bad data")

    spec = _spec(job_id=12)
    assert run_attempt(spec, ListSink(), local_store, {JobKind.INSPECT: broken}) == "failed"
    assert not local_store.exists(completion_record_key(12, 1))
