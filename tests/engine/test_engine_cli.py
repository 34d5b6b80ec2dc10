"""`python -m engine` reaches every command group, the image models' training included."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_train_vae_and_sample_from_the_top_level_cli(tmp_path):
    run = tmp_path / "vae"
    trained = _engine(
        "train",
        "vae",
        "configs/vision/vae.yaml",
        "--out",
        str(run),
        "--set",
        "train.steps=3",
        "--set",
        "train.log_interval=1",
        "--set",
        "train.checkpoint_interval=3",
        "--set",
        "train.sample_interval=0",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    grid = tmp_path / "sevens.png"
    sampled = _engine(
        "sample",
        "--checkpoint",
        str(run),
        "--prompt",
        "a handwritten 7",
        "--n",
        "4",
        "--out",
        str(grid),
    )
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_command_and_bad_config_are_one_line_errors(tmp_path):
    missing = _engine("train", "gan", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "nope.yaml" in missing.stderr
