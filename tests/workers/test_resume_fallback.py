"""A resume falls back to the newest checkpoint that exists and verifies.

The spec names one checkpoint; when it is gone or damaged the worker walks back through
the job's older checkpoints (any attempt's), and says in the job log which one it used.
"""

from __future__ import annotations

import tarfile

import pytest

from workers.events import ListSink
from workers.jobs.pretrain import _unpack_checkpoint
from workers.protocol import EventType, JobKind, JobSpec
from workers.runtime import JobContext


def _spec(resume: str | None) -> JobSpec:
    return JobSpec(
        job_id=5,
        kind=JobKind.PRETRAIN,
        project_id=2,
        attempt=3,
        inputs=(),
        params={},
        output_prefix="projects/2/jobs/5/attempt-3/",
        heartbeat_seconds=60,
        resume_checkpoint=resume,
    )


def _store_checkpoint(store, tmp_path, attempt: int, step: int) -> str:
    folder = tmp_path / "make" / f"step_{step:06d}"
    folder.mkdir(parents=True)
    (folder / "state.txt").write_text(f"step {step}")
    archive = tmp_path / "make" / f"step_{step:06d}-{attempt}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=folder.name)
    key = f"projects/2/jobs/5/attempt-{attempt}/checkpoints/step_{step:06d}.tar"
    store.put_bytes(key, archive.read_bytes())
    return key


@pytest.fixture
def checkpoints(local_store, tmp_path):
    """Steps 2 and 4 written by attempt 1, step 6 by attempt 2 (the newest)."""
    return {
        2: _store_checkpoint(local_store, tmp_path, 1, 2),
        4: _store_checkpoint(local_store, tmp_path, 1, 4),
        6: _store_checkpoint(local_store, tmp_path, 2, 6),
    }


def _resume(local_store, tmp_path, named: str):
    sink = ListSink()
    ctx = JobContext(_spec(named), sink, local_store)
    run_dir = tmp_path / "run"
    folder = ctx.download_resume_checkpoint(
        tmp_path / "download", lambda path: _unpack_checkpoint(path, run_dir)
    )
    logs = [e.payload["message"] for e in sink.events if e.type == EventType.LOG]
    return folder, logs


def test_the_named_checkpoint_is_used_when_it_is_fine(local_store, tmp_path, checkpoints):
    folder, logs = _resume(local_store, tmp_path, checkpoints[6])
    assert (folder / "state.txt").read_text() == "step 6"
    assert logs == [f"resuming from {checkpoints[6]}"]


def test_a_deleted_latest_checkpoint_falls_back_to_the_previous_one(
    local_store, tmp_path, checkpoints
):
    local_store.delete(checkpoints[6])
    folder, logs = _resume(local_store, tmp_path, checkpoints[6])
    assert folder.name == "step_000004" and (folder / "state.txt").read_text() == "step 4"
    assert logs[-1] == f"resuming from {checkpoints[4]} instead of {checkpoints[6]}"


def test_a_checkpoint_that_does_not_verify_is_skipped(local_store, tmp_path, checkpoints):
    local_store.delete(checkpoints[6])
    # Damage step 4 on disk: its bytes no longer match the sha256 the store recorded.
    path = local_store.bucket_dir / checkpoints[4]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    folder, logs = _resume(local_store, tmp_path, checkpoints[6])
    assert (folder / "state.txt").read_text() == "step 2"
    assert any(checkpoints[4] in line and "not usable" in line for line in logs)


def test_an_archive_that_does_not_unpack_is_skipped(local_store, tmp_path, checkpoints):
    bad = "projects/2/jobs/5/attempt-2/checkpoints/step_000008.tar"
    local_store.put_bytes(bad, b"this is not a tar archive")
    folder, logs = _resume(local_store, tmp_path, bad)
    assert (folder / "state.txt").read_text() == "step 6"
    assert not list((tmp_path / "download").glob("unpack-*"))  # nothing half-written left


def test_no_usable_checkpoint_starts_from_the_beginning(local_store, tmp_path, checkpoints):
    for key in checkpoints.values():
        local_store.delete(key)
    folder, logs = _resume(local_store, tmp_path, checkpoints[6])
    assert folder is None and "starting from step 0" in logs[-1]
