"""A tiny exported GPT and its token shards, made in the test (seconds, CPU)."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import TRAIN_DOCS, VAL_DOCS, TinyText, ascii_tokenizer, tiny_export, write_shards

# One intra-op thread: the machine's two cores are shared, and tiny models only lose from more.
torch.set_num_threads(1)


@pytest.fixture
def tiny_text(tmp_path) -> TinyText:
    tokenizer = ascii_tokenizer()
    shards = write_shards(tmp_path / "shards", tokenizer, TRAIN_DOCS, VAL_DOCS)
    model_dir = tiny_export(tmp_path / "model", tokenizer, shards / "tokenizer.json")
    return TinyText(model_dir, shards, tokenizer)
