"""Stopping and resuming a run changes nothing: the losses continue step by step."""

from __future__ import annotations

import shutil

from engine.train.trainer import Trainer


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
