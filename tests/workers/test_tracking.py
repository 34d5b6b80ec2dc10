"""Every job gets an MLflow run: parameters, tags back to the platform, metrics, outcome.

A real MLflow tracking store (SQLite in a temporary folder), read back with MLflow's client.
"""

from __future__ import annotations

import pytest

from workers.events import ListSink
from workers.jobs import HANDLERS
from workers.protocol import ArtifactRef, EventType, JobKind, JobSpec
from workers.runtime import run_attempt
from workers.storage import get_object_store


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    # One database for the module: creating MLflow's tables takes seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(tmp_path, monkeypatch, tracking_uri):
    monkeypatch.setenv("OBJECT_STORE_ROOT", str(tmp_path / "objects"))
    monkeypatch.delenv("OBJECT_STORE_ENDPOINT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    store = get_object_store()
    store.ensure_bucket()
    return store


def _spec(store, job_id: int, attempt: int = 1, run_id: str | None = None) -> JobSpec:
    data = b'{"text": "a"}\n' * 50
    key = f"projects/3/uploads/u{job_id}-{attempt}"
    stored = store.put_bytes(key, data)
    return JobSpec(
        job_id=job_id,
        kind=JobKind.INSPECT,
        project_id=3,
        attempt=attempt,
        inputs=(ArtifactRef(key, stored.sha256, stored.size),),
        params={"preview_records": 2},
        output_prefix=f"projects/3/jobs/{job_id}/attempt-{attempt}/",
        heartbeat_seconds=30,
        tracking_run_id=run_id,
        tracking={
            "experiment": "alpha/inspect",
            "run_name": f"inspect-{job_id}",
            "tags": {"controlplane.project_id": 3},
            "params": {"preview_records": 2},
        },
    )


def test_a_job_opens_tags_and_closes_its_run(store, tracking_uri):
    from mlflow.tracking import MlflowClient

    sink = ListSink()
    assert run_attempt(_spec(store, 41), sink, store, HANDLERS) == EventType.FINISHED
    run_id = sink.events[0].payload["tracking_run_id"]
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["preview_records"] == "2"
    assert (
        run.data.tags["controlplane.job_id"] == "41"
        and run.data.tags["controlplane.project_id"] == "3"
    )
    assert run.data.tags["mlflow.runName"] == "inspect-41"
    assert MlflowClient(tracking_uri).get_experiment(run.info.experiment_id).name == "alpha/inspect"


def test_a_second_attempt_continues_the_same_run(store, tracking_uri):
    first, second = ListSink(), ListSink()
    run_attempt(_spec(store, 42), first, store, HANDLERS)
    run_id = first.events[0].payload["tracking_run_id"]
    # The platform did not learn the id (say the event was lost): the worker finds the run.
    run_attempt(_spec(store, 42, attempt=2), second, store, HANDLERS)
    assert second.events[0].payload["tracking_run_id"] == run_id


def test_metrics_reach_the_run(store, tracking_uri):
    from mlflow.tracking import MlflowClient

    from workers.runtime import JobContext
    from workers.tracking import start_tracking

    spec = _spec(store, 43)
    ctx = JobContext(spec, ListSink(), store)
    ctx.tracker = start_tracking(spec)
    for step in range(3):
        ctx.metric(step, **{"train/loss": 3.0 - step})
    ctx.tracker.finish("FINISHED")
    history = MlflowClient(tracking_uri).get_metric_history(ctx.tracker.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_tracking_down_does_not_stop_the_job(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    sink = ListSink()
    assert run_attempt(_spec(store, 44), sink, store, HANDLERS) == EventType.FINISHED
    logs = [e.payload["message"] for e in sink.events if e.type == EventType.LOG]
    assert any("MLflow tracking unavailable" in m for m in logs)


def _history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    points = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in points)


@pytest.mark.slow
def test_steps_replayed_after_a_resume_are_not_logged_again(store, tracking_uri):
    """Attempt 2 resumes from the step-3 checkpoint and replays steps 4 and 5."""
    from workers.runtime import JobContext
    from workers.tracking import start_tracking

    first = JobContext(_spec(store, 45), ListSink(), store)
    first.tracker = start_tracking(first.spec, is_current=first.is_current_attempt)
    for step in range(6):
        first.metric(step, **{"train/loss": 10.0 - step})
    first.metric(3, **{"val/loss": 7.5})
    run_id = first.tracker.run_id  # attempt 1 died here without closing the run

    second_spec = _spec(store, 45, attempt=2, run_id=run_id)
    second = JobContext(second_spec, ListSink(), store)
    second.tracker = start_tracking(second_spec, is_current=second.is_current_attempt)
    for step in range(4, 9):
        second.metric(step, **{"train/loss": 20.0 - step})
    second.metric(6, **{"val/loss": 6.5})
    second.tracker.finish("FINISHED")

    assert _history(tracking_uri, run_id, "train/loss") == [
        (0, 10.0),
        (1, 9.0),
        (2, 8.0),
        (3, 7.0),
        (4, 6.0),
        (5, 5.0),
        (6, 14.0),
        (7, 13.0),
        (8, 12.0),
    ]
    assert _history(tracking_uri, run_id, "val/loss") == [(3, 7.5), (6, 6.5)]
    # The platform's events still carry every step: its own table overwrites replays.
    assert [e.payload["step"] for e in second._sink.events if e.type == "metric"][0] == 4


def test_a_superseded_attempt_leaves_the_run_alone(store, tracking_uri):
    """Attempt 1's worker stalls, the reaper hands the job to attempt 2, which finishes;
    then attempt 1 wakes up, logs its next steps and ends: the run must not change."""
    from mlflow.tracking import MlflowClient

    from workers.protocol import superseded_marker_key

    client = MlflowClient(tracking_uri)
    seen = {}

    def current_attempt(ctx):
        for step in range(6):
            ctx.metric(step, **{"train/loss": 100.0 + step})
        return {"steps": 6}

    def stale_attempt(ctx):
        for step in range(3):
            ctx.metric(step, **{"train/loss": 100.0 + step})
        # The worker stalls; meanwhile the reaper supersedes attempt 1 and attempt 2 runs.
        store.put_bytes(superseded_marker_key(46, 1), b"")
        second = ListSink()
        outcome = run_attempt(
            _spec(store, 46, attempt=2, run_id=ctx.tracker.run_id),
            second,
            store,
            {JobKind.INSPECT: current_attempt},
        )
        assert outcome == EventType.FINISHED
        seen["run"] = client.get_run(ctx.tracker.run_id)
        # Attempt 1 wakes up: its next steps, then its stop check.
        for step in range(3, 5):
            ctx.metric(step, **{"train/loss": -1.0})
        ctx.tracker.log_text("stale", "samples.json")
        ctx.check_stop()

    sink = ListSink()
    outcome = run_attempt(_spec(store, 46), sink, store, {JobKind.INSPECT: stale_attempt})
    assert outcome == "superseded"
    run_id = sink.events[0].payload["tracking_run_id"]
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    assert after.info.end_time == seen["run"].info.end_time
    assert _history(tracking_uri, run_id, "train/loss") == [(s, 100.0 + s) for s in range(6)]
    assert not [a for a in client.list_artifacts(run_id) if a.path == "samples.json"]
