"""Stopping and resuming a run changes nothing: the losses continue step by step."""

from __future__ import annotations

import shutil

from engine.train.trainer import Trainer
from tests.engine.recording_callback import Recorder


def test_resumed_run_reproduces_the_uninterrupted_losses(make_config, tmp_path):
    # Dropout on, so the restored RNG state matters too.
    config = make_config("full", model={"dropout": 0.1})
    uninterrupted = dict(Trainer(config).fit().losses)

    # A second run that "stopped" at step 4: only its step-4 checkpoint survives.
    stopped = make_config("stopped", model={"dropout": 0.1})
    (stopped_dir := tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_000004", stopped_dir / "step_000004")

    trainer = Trainer(stopped, resume=True)
    assert trainer.step == 4
    resumed = dict(trainer.fit().losses)

    assert sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        assert resumed[step] == uninterrupted[step], step  # exact on CPU, not approximately


def test_resume_without_a_checkpoint_says_so(make_config):
    import pytest

    from engine.train.trainer import TrainingError

    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer(make_config("empty"), resume=True)


def test_should_stop_ends_the_run_at_a_checkpoint_that_resumes_exactly(make_config):
    uninterrupted = dict(Trainer(make_config("full")).fit().losses)

    # log_interval 1: on_metrics sees every step; no checkpoint interval before step 8.
    stopper = Recorder(stop_at=3)
    stopped = make_config("stopped", checkpoint={"interval": 0})
    summary = Trainer(stopped, callbacks=[stopper]).fit()
    assert summary.stopped and summary.step == 3
    assert stopper.checkpoint_steps == [3] and summary.checkpoint.name == "step_000003"

    resumed = Trainer(make_config("stopped"), resume=True).fit()
    assert not resumed.stopped and resumed.step == 8
    for step, loss in resumed.losses:
        assert loss == uninterrupted[step], step
