"""Cancel is honoured in every phase of a training job, not only between steps.

The cancel marker is written while the worker exports the model, samples from it or
uploads its files (the phases after the training loop). The job must end `cancelled`
within a few seconds and publish nothing once the cancel was seen.

Inside the loop, each of the three engine loops (pre-training, image generators,
post-training) hears the cancel through the job's `should_stop` callback: it checkpoints
that step, the worker reports that checkpoint, and nothing else is published.
"""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

PARAMS = {
    "preset": "tiny",
    "train": {"max_iters": 6, "batch_size": 4, "eval_interval": 6, "eval_iters": 1},
    "model": {"block_size": 32},
    "checkpoint_interval": 6,
    "sample_tokens": 10,
    "sample_prompts": ["ROMEO:"],
}


@pytest.fixture
def pretrain_job(team, token_version):
    from controlplane.jobs.services import job_create

    return job_create(
        project=team.project,
        kind="pretrain",
        actor=team.engineer,
        params={"dataset_version_id": token_version.pk, **PARAMS},
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


# Every step logged and checkpointed, so the step the cancel stops at is known exactly.
LOOPS = {
    "pretrain": {
        "preset": "tiny",
        "train": {
            "max_iters": 6,
            "batch_size": 4,
            "log_interval": 1,
            "eval_interval": 6,
            "eval_iters": 1,
        },
        "model": {"block_size": 32},
        "checkpoint_interval": 1,
    },
    "vae": {
        "preset": "tiny",
        "device": "cpu",
        "train": {
            "steps": 6,
            "batch_size": 8,
            "log_interval": 1,
            "checkpoint_interval": 1,
            "sample_interval": 1,
        },
    },
    "sft": {
        "pairs_count": 48,
        "device": "cpu",
        "train": {
            "steps": 6,
            "batch_size": 4,
            "log_interval": 1,
            "eval_interval": 0,
            "checkpoint_interval": 1,
        },
    },
}
STOP_AT = 2  # the marker is written once step 2's metrics are reported


def _loop_job(request, team, kind: str):
    from controlplane.jobs.services import job_create

    params = dict(LOOPS[kind])
    if kind == "pretrain":
        params["dataset_version_id"] = request.getfixturevalue("token_version").pk
    elif kind == "sft":
        params["base_job_id"] = request.getfixturevalue("model_job").pk
    return job_create(project=team.project, kind=kind, actor=team.engineer, params=params)


def _marker_at_step(monkeypatch, job, marker_key: str, seen: dict) -> None:
    """Write `marker_key` once the loop reports step STOP_AT; read markers at every check."""
    from controlplane.jobs.services.lifecycle import put_marker
    from workers import runtime
    from workers.training import TrainingCallbacks

    monkeypatch.setattr(runtime, "STOP_CHECK_SECONDS", 0.0)
    original = TrainingCallbacks.on_metrics

    def then_marker(self, step, metrics):
        original(self, step, metrics)
        if step >= STOP_AT and "at" not in seen:
            put_marker(marker_key, "written by the test")
            seen["at"] = time.time()

    monkeypatch.setattr(TrainingCallbacks, "on_metrics", then_marker)


@pytest.mark.parametrize("kind", ["pretrain", "vae", "sft"])
def test_a_cancel_seen_by_the_loop_reports_its_checkpoint_and_nothing_else(
    request, monkeypatch, settings, team, kind
):
    from controlplane.storage import object_store
    from workers.protocol import cancel_marker_key

    settings.TRAINING_QUEUE = "cpu"
    job = _loop_job(request, team, kind)
    seen: dict = {}
    _marker_at_step(monkeypatch, job, cancel_marker_key(job.pk), seen)
    job, events = _run(job)
    assert job.state == "cancelled", (job.state, job.error)
    assert [e.type for e in events if e.time >= seen["at"]][-2:] == ["checkpoint", "cancelled"]
    checkpoints = [e.payload for e in events if e.type == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [1, STOP_AT]  # the stop's checkpoint is the last
    stop_checkpoint = job.artifacts.get(kind="checkpoint", step=STOP_AT)
    assert stop_checkpoint.object_key.rsplit("/", 1)[-1].startswith(f"step_{STOP_AT:06d}.")
    assert object_store().stat(stop_checkpoint.object_key).sha256 == stop_checkpoint.sha256
    published_late = [e for e in events if e.type == "artifact" and e.time >= seen["at"]]
    assert published_late == []
    # Only the image loop publishes during training (the grid of step 1, before the cancel).
    outputs = set(job.artifacts.filter(kind="output").values_list("name", flat=True))
    assert outputs == ({"samples/step_000001.png"} if kind == "vae" else set())
    assert max(e.payload["step"] for e in events if e.type == "metric") == STOP_AT
    assert not [e for e in events if e.type == "finished"]


def test_a_superseded_attempt_stops_in_the_loop_and_reports_nothing_more(
    monkeypatch, settings, team
):
    from controlplane.jobs.dispatch import job_spec
    from controlplane.storage import object_store
    from workers.events import ListSink
    from workers.jobs import HANDLERS
    from workers.protocol import superseded_marker_key
    from workers.runtime import run_attempt

    settings.TRAINING_QUEUE = "cpu"
    job = _loop_job(None, team, "vae")
    seen: dict = {}
    _marker_at_step(monkeypatch, job, superseded_marker_key(job.pk, job.attempt), seen)
    sink = ListSink()
    assert run_attempt(job_spec(job), sink, object_store(), HANDLERS) == "superseded"
    late = [e.type for e in sink.events if e.time >= seen["at"]]
    assert not {"checkpoint", "artifact", "cancelled", "finished", "failed"} & set(late), late
    assert [e.payload["step"] for e in sink.events if e.type == "checkpoint"] == [1]
