"""A short run of a long recipe still reaches the recipe's learning rate: the warm-up never
takes more than a tenth of the run, in all three training loops."""

from __future__ import annotations

import pytest

from engine.finetune.config import load_config as finetune_config
from engine.finetune.run import _learning_rate
from engine.loop.schedule import warmup_for
from engine.train.config import OptimConfig
from engine.train.optim import WarmupCosine


@pytest.mark.parametrize(
    ("configured", "steps", "expected"),
    [(100, 2000, 100), (200, 150, 15), (10, 20, 2), (0, 500, 0), (100, 5, 0)],
)
def test_warmup_is_the_configured_one_or_a_tenth_of_the_run(configured, steps, expected):
    assert warmup_for(configured, steps) == expected


def test_a_short_pretraining_run_reaches_its_peak_learning_rate():
    schedule = WarmupCosine.from_config(OptimConfig(lr=1e-3, warmup_iters=100), max_iters=150)
    assert schedule(14) < 1e-3
    assert schedule(15) == pytest.approx(1e-3)
    # nanoGPT's full-length recipe keeps its own warm-up.
    assert (
        WarmupCosine.from_config(OptimConfig(warmup_iters=100), max_iters=2000).warmup_iters == 100
    )


def test_a_short_post_training_run_reaches_its_learning_rate():
    config = finetune_config("dpo", overrides=["train.steps=20", "train.warmup_steps=10"])
    assert _learning_rate(config, 0) < config.lr
    assert _learning_rate(config, 1) == pytest.approx(config.lr)
