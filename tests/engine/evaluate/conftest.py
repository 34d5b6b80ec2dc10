"""A tiny exported GPT and its token shards, made in the test (seconds, CPU)."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import TRAIN_DOCS, VAL_DOCS, TinyText, write_shards

# One intra-op thread: the machine's two cores are shared, and tiny models only lose from more.
torch.set_num_threads(1)


@pytest.fixture
def tiny_text(tmp_path) -> TinyText:
    from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
    from engine.models.gpt import GPT, GPTConfig
    from engine.train.export import export_model

    # Every printable ASCII character: prompts, PII and lexicon words all encode.
    alphabet = "".join(chr(c) for c in range(32, 127)) + "\n"
    tokenizer = CharTokenizer.train(alphabet, special_tokens=DEFAULT_SPECIAL_TOKENS)
    shards = write_shards(tmp_path / "shards", tokenizer, TRAIN_DOCS, VAL_DOCS)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16
    )
    model_dir = export_model(
        GPT(config),
        tmp_path / "model",
        tokenizer_file=shards / "tokenizer.json",
        eot_id=tokenizer.eot_id,
    )
    return TinyText(model_dir, shards, tokenizer)
