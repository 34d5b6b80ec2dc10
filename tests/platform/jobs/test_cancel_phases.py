"""Cancel is honoured in every phase of a pre-training job, not only between steps.

The cancel marker is written while the worker exports the model, samples from it or
uploads its files (the phases after the training loop). The job must end `cancelled`
within a few seconds and publish nothing once the cancel was seen.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.django_db

PARAMS = {
    "preset": "tiny",
    "train": {"max_iters": 6, "batch_size": 4, "eval_interval": 6, "eval_iters": 1},
    "model": {"block_size": 32},
    "checkpoint_interval": 6,
    "sample_tokens": 10,
    "sample_prompts": ["ROMEO:"],
}


@pytest.fixture
def pretrain_job(team, make_ready_version, settings, run_on_worker):
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.services import job_create
    from engine.data.corpora import shakespeare_files

    settings.TRAINING_QUEUE = "cpu"
    files = {p.name: p.read_bytes() for p in shakespeare_files("modern")[:2]}
    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    raw = make_ready_version(dataset, team.engineer, files)
    pipeline = run_on_worker(
        job_create(
            project=team.project,
            kind="data_pipeline",
            actor=team.engineer,
            params={"dataset_version_id": raw.pk, "val_fraction": 0.34},
        )
    )
    derived = pipeline.produced_versions.get()
    return job_create(
        project=team.project,
        kind="pretrain",
        actor=team.engineer,
        params={"dataset_version_id": derived.pk, **PARAMS},
    )


def _cancel_during(monkeypatch, target, name: str, job, seen: dict) -> None:
    """Make `target.name` write the job's cancel marker when it runs, then do its work."""
    from controlplane.jobs.services.lifecycle import put_marker
    from workers.protocol import cancel_marker_key

    original = getattr(target, name)

    def with_cancel(*args, **kwargs):
        if "at" not in seen:
            put_marker(cancel_marker_key(job.pk), "cancel requested by the test")
            seen["at"] = time.time()
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, with_cancel)


def _run(job):
    """The worker's run, its events applied as the control worker would."""
    from controlplane.jobs.dispatch import job_spec
    from controlplane.jobs.services import job_apply_event
    from controlplane.storage import object_store
    from workers.events import ListSink
    from workers.jobs import HANDLERS
    from workers.runtime import run_attempt

    sink = ListSink()
    run_attempt(job_spec(job), sink, object_store(), HANDLERS)
    for event in sink.events:
        job_apply_event(event)
    job.refresh_from_db()
    return job, sink.events


def _assert_cancelled_and_nothing_published_after(job, events, seen) -> None:
    assert job.state == "cancelled", (job.state, job.error)
    assert events[-1].type == "cancelled"
    assert events[-1].time - seen["at"] < 5  # honoured within a few seconds
    late = [e for e in events if e.type == "artifact" and e.time >= seen["at"]]
    assert late == [], "published after the cancel was seen"
    assert not job.artifacts.filter(kind="output").exists()


@pytest.mark.parametrize(
    "phase",
    ["export", "sampling", "upload"],
)
def test_a_cancel_after_the_training_loop_is_honoured(monkeypatch, pretrain_job, phase):
    import engine.train.export
    import workers.jobs.pretrain as pretrain
    from workers.runtime import JobContext

    seen: dict = {}
    if phase == "export":
        _cancel_during(monkeypatch, engine.train.export, "export_checkpoint", pretrain_job, seen)
    elif phase == "sampling":
        _cancel_during(monkeypatch, pretrain, "_samples", pretrain_job, seen)
    else:
        _cancel_during(monkeypatch, JobContext, "upload", pretrain_job, seen)
    job, events = _run(pretrain_job)
    assert "at" in seen, f"the {phase} phase never ran"
    _assert_cancelled_and_nothing_published_after(job, events, seen)
    assert not [e for e in events if e.type == "finished"]
