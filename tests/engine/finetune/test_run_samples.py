"""A post-training run's samples are drawn (temperature 0.8, top-k 50, a fixed seed) like
the pre-training samples, not greedy: a small model's greedy answer is "the the the"."""

from __future__ import annotations

import json

import torch

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
from engine.finetune.outputs import write_samples
from engine.finetune.sft import ChatTemplate
from engine.models.gpt import GPT, GPTConfig


def _model_and_template():
    tokenizer = CharTokenizer.train(
        "Well, my lord, there's no remedy.", special_tokens=DEFAULT_SPECIAL_TOKENS
    )
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32
    )
    return GPT(config), tokenizer, ChatTemplate(tokenizer)


def test_samples_are_drawn_and_repeatable(tmp_path):
    model, tokenizer, template = _model_and_template()
    prompts = ["Well, my lord,", "Well, my lord,"]
    first = write_samples(model, tokenizer, template, prompts, tmp_path)
    # The same prompt twice gets two different answers: drawn, not the one most likely.
    assert first[0]["text"] != first[1]["text"]
    # The same model gives the same samples, and samples.json holds them.
    assert write_samples(model, tokenizer, template, prompts, tmp_path) == first
    assert json.loads((tmp_path / "samples.json").read_text()) == first
