"""Tiny GPTs shared by the serving tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from engine.models.gpt import GPT
from tests.enginemodels import SPEECH, trained_gpt

TEXT = SPEECH


def trained_model(tokenizer, variant: str = "gpt2") -> GPT:
    """Trained on TEXT for 60 steps (block size 64): see `tests.enginemodels.trained_gpt`."""
    return trained_gpt(tokenizer, variant, block_size=64)
