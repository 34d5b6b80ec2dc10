"""Checkpoints are atomic, pruned, and a resumed run ends where an unbroken one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.vision.checkpoint import CheckpointError, VisionCheckpoints, load_checkpoint
from engine.vision.train import TrainingError, load_recipe, train
from tests.engine.recording_callback import Recorder


def _weights(path) -> dict:
    return load_checkpoint(path)["state"]


def _assert_same_state(a, b, where="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("kind", ["diffusion", "gan", "vae"])
def test_resumed_run_equals_unbroken_run(make_config, kind):
    whole = train(make_config(kind, "whole"))
    first = train(make_config(kind, "split", train={"steps": 2}))
    assert first.steps == 2
    resumed = train(make_config(kind, "split"), resume=True)
    assert resumed.steps == 4
    _assert_same_state(_weights(whole.checkpoint), _weights(resumed.checkpoint))


def test_checkpoints_are_complete_files_and_old_ones_pruned(make_config):
    config = make_config("vae", train={"steps": 6, "checkpoint_interval": 1, "keep_last": 2})
    summary = train(config)
    folder = summary.checkpoint.rsplit("/", 1)[0]
    steps = VisionCheckpoints(config.run_dir).steps()
    assert steps == [5, 6]
    assert not list(Path(folder).glob(".*tmp"))
    payload = load_checkpoint(config.run_dir)  # a run folder means its latest checkpoint
    assert payload["step"] == 6 and payload["kind"] == "vae"


def test_training_writes_grid_and_metrics(make_config):
    recorder = Recorder()
    config = make_config("gan", train={"sample_interval": 2})
    summary = train(config, callbacks=[recorder])
    seen = recorder.metrics
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    assert {"train/d_loss", "train/g_loss", "train/lr"} <= set(seen[-1][1])
    run_dir = Path(config.run_dir)
    samples = sorted(path.name for path in (run_dir / "samples").iterdir())
    assert samples == ["step_000002.png", "step_000004.png"]
    assert summary.grid.endswith("step_000004.png")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4


def test_resume_refuses_other_models_and_empty_runs(make_config):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(make_config("vae", "empty"), resume=True)
    vae = train(make_config("vae", "vae"))
    with pytest.raises(TrainingError, match="is a vae checkpoint"):
        train(make_config("gan", "gan"), resume=vae.checkpoint)
    with pytest.raises(TrainingError, match="different model"):
        train(make_config("vae", "vae", model={"latent_dim": 4}), resume=True)


def test_unreadable_checkpoint_is_refused(tmp_path):
    bogus = tmp_path / "step_000001.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_recipe(bogus)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_recipe(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        load_recipe(tmp_path)


def test_callbacks_hear_of_every_checkpoint_and_grid(make_config):
    recorder = Recorder()
    config = make_config("vae", train={"checkpoint_interval": 2, "sample_interval": 2})
    train(config, callbacks=[recorder])
    assert [(s, p.name) for s, p in recorder.checkpoints] == [
        (2, "step_000002.pt"),
        (4, "step_000004.pt"),
    ]
    assert [(s, p.name) for s, p in recorder.artifacts] == [
        (2, "step_000002.png"),
        (4, "step_000004.png"),
    ]


def test_should_stop_checkpoints_the_step_and_the_run_resumes_exactly(make_config):
    whole = train(make_config("gan", "whole"))
    recorder = Recorder(stop_at=1)
    stopped = train(
        make_config("gan", "split", train={"checkpoint_interval": 0}), callbacks=[recorder]
    )
    assert stopped.stopped and stopped.steps == 1
    assert recorder.checkpoint_steps == [1]
    resumed = train(make_config("gan", "split"), resume=True)
    assert resumed.steps == 4 and not resumed.stopped
    _assert_same_state(_weights(whole.checkpoint), _weights(resumed.checkpoint))
