"""Two CPU processes (gloo, launched by torchrun) train exactly like one with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_config_dict

from engine.train.checkpoint import load_model_state
from engine.train.config import config_from_dict
from engine.train.trainer import Trainer

pytestmark = pytest.mark.slow  # torchrun process groups: seconds each


def _torchrun(config: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "engine",
        "train",
        "pretrain",
        str(config),
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _logged_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(char_shards, tmp_path, parallel):
    # One process: 4 sequences per micro-step, 2 micro-steps per step.
    single = config_from_dict(
        tiny_config_dict(char_shards, tmp_path / "single", train={"max_iters": 6, "grad_accum": 2})
    )
    reference = dict(Trainer(single).fit().losses)

    # Two processes: 2 sequences each per micro-step (the gradient all-reduce is skipped
    # on the first micro-step), FSDP writes a sharded checkpoint.
    raw = tiny_config_dict(
        char_shards,
        tmp_path / parallel,
        train={"max_iters": 6, "grad_accum": 2, "batch_size": 2, "parallel": parallel},
    )
    config_path = tmp_path / f"{parallel}.yaml"
    config_path.write_text(json.dumps(raw))  # JSON is YAML
    _torchrun(config_path)
    distributed = _logged_losses(tmp_path / parallel)

    assert sorted(distributed) == sorted(reference) == list(range(1, 7))
    for step, loss in reference.items():
        assert distributed[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), step
    assert reference[6] < reference[1]  # and it learns

    final = tmp_path / parallel / "checkpoints" / "step_000006"
    meta = json.loads((final / "meta.json").read_text())
    assert meta["sharded"] is (parallel == "fsdp")
    # Weights gathered from the shards equal the single process' weights.
    mine = load_model_state(final)
    theirs = load_model_state(tmp_path / "single" / "checkpoints" / "step_000006")
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=1e-4, atol=1e-5)
