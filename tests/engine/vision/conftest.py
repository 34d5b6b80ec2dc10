"""Tiny image generators and a quickly trained evaluator, shared by the vision tests."""

from __future__ import annotations

import pytest
import torch
from vision_helpers import tiny_config

from engine.vision.evaluate import Evaluator

# One intra-op thread: the two cores are shared, and tiny models only lose from more.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def evaluator(tmp_path_factory) -> Evaluator:
    """Trained for a few epochs only (seconds); enough to tell digits from noise."""
    cache = tmp_path_factory.mktemp("evaluator") / "evaluator.pt"
    return Evaluator.load_or_train(cache, epochs=6)


@pytest.fixture
def make_config(tmp_path):
    def make(kind: str, run: str = "run", **overrides):
        return tiny_config(kind, tmp_path / run, **overrides)

    return make
