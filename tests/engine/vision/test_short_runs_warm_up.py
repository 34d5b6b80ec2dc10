"""The digits recipes warm up for 200 steps: a 20-step run must still train at train.lr."""

from __future__ import annotations

import pytest

from engine.vision.train import train
from tests.engine.recording_callback import Recorder


def test_a_run_shorter_than_the_recipe_warmup_reaches_its_learning_rate(make_config):
    config = make_config(
        "diffusion", train={"steps": 20, "warmup_steps": 200, "checkpoint_interval": 0}
    )
    recorder = Recorder()
    train(config, callbacks=[recorder])
    rates = [metrics["train/lr"] for _, metrics in recorder.metrics if "train/lr" in metrics]
    assert rates[0] < config.train.lr
    assert rates[-1] == pytest.approx(config.train.lr)
