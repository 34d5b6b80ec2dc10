"""Fixtures of the serving tests: the tokenizer (with the chat tokens) and a tiny trained GPT."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import TEXT, trained_model

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
from engine.models.gpt import GPT

# One intra-op thread: the machine's two cores are shared, and tiny models only lose from more.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train(TEXT, special_tokens=DEFAULT_SPECIAL_TOKENS)


@pytest.fixture
def model(tokenizer) -> GPT:
    return trained_model(tokenizer)
