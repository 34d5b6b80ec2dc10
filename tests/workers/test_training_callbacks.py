"""The one callback through which a training job follows its engine loop (workers/training.py).

What it stores keeps the names the resume fallback parses (step_NNNNNN.tar / .pt), and
after a stop it publishes the stop's checkpoint (cancel) or nothing (superseded).
"""

from __future__ import annotations

import pytest

from workers.events import ListSink
from workers.jobs.pretrain import _unpack_checkpoint
from workers.protocol import (
    EventType,
    JobKind,
    JobSpec,
    cancel_marker_key,
    superseded_marker_key,
)
from workers.runtime import JobContext, JobStopped


def _context(store, attempt: int = 1, resume: str | None = None) -> tuple[JobContext, ListSink]:
    spec = JobSpec(
        job_id=5,
        kind=JobKind.PRETRAIN,
        project_id=2,
        attempt=attempt,
        inputs=(),
        params={},
        output_prefix=f"projects/2/jobs/5/attempt-{attempt}/",
        heartbeat_seconds=60,
        resume_checkpoint=resume,
    )
    sink = ListSink()
    return JobContext(spec, sink, store, stop_check_seconds=0), sink


def _of_type(sink: ListSink, event_type: EventType) -> list[dict]:
    return [event.payload for event in sink.events if event.type == event_type]


def _step_file(tmp_path, step: int):
    path = tmp_path / "run" / "checkpoints" / f"step_{step:06d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights of step %d" % step)
    return path


def test_metrics_become_metric_and_progress_events(local_store):
    ctx, sink = _context(local_store)
    callbacks = ctx.training_callbacks(progress_until=0.9)
    callbacks.on_train_start({"start_step": 0, "total_steps": 10})
    callbacks.on_metrics(5, {"train/loss": 2.5})
    assert _of_type(sink, EventType.METRIC) == [{"step": 5, "values": {"train/loss": 2.5}}]
    assert _of_type(sink, EventType.PROGRESS) == [{"fraction": 0.45, "message": "step 5 of 10"}]


def test_a_checkpoint_folder_is_stored_as_a_tar_the_next_attempt_resumes_from(
    local_store, tmp_path
):
    folder = tmp_path / "run" / "checkpoints" / "step_000003"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_text("step 3")
    ctx, sink = _context(local_store)
    ctx.training_callbacks().on_checkpoint(3, folder, val_loss=1.5)
    [reported] = _of_type(sink, EventType.CHECKPOINT)
    assert reported["key"] == "projects/2/jobs/5/attempt-1/checkpoints/step_000003.tar"
    assert reported["step"] == 3 and reported["sha256"] == local_store.stat(reported["key"]).sha256
    assert [p.name for p in folder.parent.iterdir()] == ["step_000003"]  # no packing left over

    next_attempt, _ = _context(local_store, attempt=2, resume=reported["key"])
    resumed = next_attempt.download_resume_checkpoint(
        tmp_path / "download", lambda archive: _unpack_checkpoint(archive, tmp_path / "run2")
    )
    assert (resumed / "state.pt").read_text() == "step 3"


def test_a_checkpoint_file_and_a_grid_keep_their_names(local_store, tmp_path):
    grid = tmp_path / "run" / "samples" / "step_000004.png"
    grid.parent.mkdir(parents=True)
    grid.write_bytes(b"\x89PNG")
    ctx, sink = _context(local_store)
    callbacks = ctx.training_callbacks()
    callbacks.on_checkpoint(4, _step_file(tmp_path, 4))
    callbacks.on_artifact(4, grid)
    prefix = "projects/2/jobs/5/attempt-1/"
    assert _of_type(sink, EventType.CHECKPOINT)[0]["key"] == f"{prefix}checkpoints/step_000004.pt"
    [artifact] = _of_type(sink, EventType.ARTIFACT)
    assert artifact["name"] == "samples/step_000004.png"
    assert artifact["key"] == f"{prefix}samples/step_000004.png"


def test_after_a_cancel_only_the_stop_checkpoint_is_published(local_store, tmp_path):
    ctx, sink = _context(local_store)
    callbacks = ctx.training_callbacks()
    assert not callbacks.should_stop()
    local_store.put_bytes(cancel_marker_key(5), b"cancel")
    assert callbacks.should_stop()
    callbacks.on_checkpoint(6, _step_file(tmp_path, 6))  # the loop's checkpoint of its stop
    grid = tmp_path / "step_000006.png"
    grid.write_bytes(b"\x89PNG")
    callbacks.on_artifact(6, grid)
    assert [c["step"] for c in _of_type(sink, EventType.CHECKPOINT)] == [6]
    assert _of_type(sink, EventType.ARTIFACT) == []
    assert not local_store.exists("projects/2/jobs/5/attempt-1/samples/step_000006.png")
    callbacks.end_if_stopped(False)  # a run that was not stopped goes on to its outputs
    with pytest.raises(JobStopped):
        callbacks.end_if_stopped(True)


def test_a_superseded_attempt_keeps_its_stop_checkpoint_to_itself(local_store, tmp_path):
    ctx, sink = _context(local_store)
    callbacks = ctx.training_callbacks()
    local_store.put_bytes(superseded_marker_key(5, 1), b"superseded")
    assert callbacks.should_stop()
    callbacks.on_checkpoint(6, _step_file(tmp_path, 6))
    assert _of_type(sink, EventType.CHECKPOINT) == []
    assert list(local_store.list("projects/2/jobs/5/")) == []
    with pytest.raises(JobStopped):
        callbacks.end_if_stopped(True)


def test_a_cancel_during_a_periodic_checkpoint_publishes_nothing(local_store, tmp_path):
    ctx, sink = _context(local_store)
    callbacks = ctx.training_callbacks()
    local_store.put_bytes(cancel_marker_key(5), b"cancel")  # not yet asked by the loop
    with pytest.raises(JobStopped):
        callbacks.on_checkpoint(2, _step_file(tmp_path, 2))
    assert _of_type(sink, EventType.CHECKPOINT) == []
