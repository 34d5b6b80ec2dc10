"""Checkpoints appear only when complete; the last K and the best are kept; configs must match."""

from __future__ import annotations

import json

import pytest

from engine.train.checkpoint import Checkpointer
from engine.train.trainer import Trainer, TrainingError


def test_keeps_the_last_k_and_the_best(make_config, tmp_path):
    config = make_config(
        "run",
        train={"max_iters": 10, "eval_interval": 2},
        checkpoint={"interval": 2, "keep_last": 2},
    )
    Trainer(config).fit()
    checkpointer = Checkpointer(tmp_path / "run")
    best = checkpointer.best()
    steps = checkpointer.steps()
    assert steps[-2:] == [8, 10]
    assert set(steps) == {8, 10, best["step"]}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val/loss"] for r in lines if "val/loss" in r}
    assert best["val_loss"] == min(val.values())
    assert best["step"] == min(val, key=val.get)


def test_an_incomplete_checkpoint_is_never_picked_up(make_config, tmp_path):
    Trainer(make_config("run")).fit()
    folder = tmp_path / "run" / "checkpoints"
    # A crash while writing step 12 leaves a temporary folder, never a step_ folder
    # without meta.json; neither counts.
    (folder / ".tmp-step_000012").mkdir()
    (folder / "step_000016").mkdir()
    (folder / "step_000016" / "state.pt").write_bytes(b"half")
    assert Checkpointer(tmp_path / "run").latest().name == "step_000008"
    trainer = Trainer(make_config("run", train={"max_iters": 9}), resume=True)
    assert trainer.step == 8


def test_resuming_with_another_model_config_names_the_key(make_config):
    Trainer(make_config("run")).fit()
    with pytest.raises(TrainingError, match=r"model\.n_embd=32 .* model\.n_embd=48"):
        Trainer(make_config("run", model={"n_embd": 48}), resume=True)


def test_resuming_with_another_global_batch_is_refused(make_config):
    Trainer(make_config("run")).fit()
    with pytest.raises(TrainingError, match="global_batch"):
        Trainer(make_config("run", train={"batch_size": 3}), resume=True)
