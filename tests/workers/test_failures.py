"""A failure of the infrastructure is marked retryable; a job's own error is not."""

from __future__ import annotations

from tests.workers.storage.test_retrying import Blips
from workers.events import ListSink
from workers.protocol import RETRYABLE_FIELD, EventType, JobKind, JobSpec
from workers.runtime import run_attempt
from workers.storage.retrying import RetryingObjectStore


def _spec(job_id: int) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        kind=JobKind.INSPECT,
        project_id=1,
        attempt=1,
        inputs=(),
        params={"preview_records": 5},  # as the platform fills it in
        output_prefix=f"projects/1/jobs/{job_id}/attempt-1/",
        heartbeat_seconds=60,
    )


def test_a_store_that_stays_away_fails_the_attempt_as_retryable(local_store):
    blips = Blips(local_store, methods=("put_stream",))
    store = RetryingObjectStore(blips, patience_seconds=0.3, first_delay_seconds=0.05)

    def uploads_a_checkpoint(ctx):
        blips.failures = 10**6  # the store goes away for good mid-job
        ctx.store.put_bytes(ctx.output_key("checkpoints", "step_000001.pt"), b"weights")

    sink = ListSink()
    outcome = run_attempt(_spec(1), sink, store, {JobKind.INSPECT: uploads_a_checkpoint})
    assert outcome == EventType.FAILED
    failed = sink.events[-1]
    assert failed.payload[RETRYABLE_FIELD] is True and "kept failing" in failed.payload["error"]


def test_a_store_away_at_start_fails_as_retryable_too(local_store):
    store = RetryingObjectStore(
        Blips(local_store, failures=10**6), patience_seconds=0.2, first_delay_seconds=0.05
    )
    sink = ListSink()
    assert run_attempt(_spec(2), sink, store, {}) == EventType.FAILED
    assert sink.events[-1].payload[RETRYABLE_FIELD] is True


def test_the_jobs_own_error_is_not_retryable(local_store):
    def broken(ctx):
        raise ValueError("column 'text' is missing")

    sink = ListSink()
    assert run_attempt(_spec(3), sink, local_store, {JobKind.INSPECT: broken}) == "failed"
    assert RETRYABLE_FIELD not in sink.events[-1].payload
    assert "column 'text'" in sink.events[-1].payload["error"]


def test_a_missing_input_is_not_an_infrastructure_failure(local_store):
    def reads_missing(ctx):
        ctx.store.get_bytes("projects/1/uploads/erased")

    sink = ListSink()
    store = RetryingObjectStore(local_store, patience_seconds=5)
    assert run_attempt(_spec(4), sink, store, {JobKind.INSPECT: reads_missing}) == "failed"
    assert RETRYABLE_FIELD not in sink.events[-1].payload
