"""The GPT module: both variants train, padding and the KV cache do not change the numbers."""

from __future__ import annotations

import pytest
import torch

from engine.models.gpt import GPT, GPTConfig, KVCache

TINY = dict(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=16)


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_both_variants_learn_a_repeating_sequence(variant):
    torch.manual_seed(0)
    config = GPTConfig(**TINY) if variant == "gpt2" else GPTConfig.llama_style(**TINY)
    model = GPT(config)
    idx = torch.arange(17).repeat(2)[None, :24] % 40
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 3


def test_gpt2_layout_and_initialisation():
    model = GPT(GPTConfig(**TINY))
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    assert "transformer.h.0.attn.c_attn.weight" in model.state_dict()
    assert model.transformer.h[1].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 2, rel=0.2)


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_a_left_padded_prompt_gives_the_logits_it_gives_alone(variant):
    torch.manual_seed(0)
    config = GPTConfig(**TINY) if variant == "gpt2" else GPTConfig.llama_style(**TINY)
    model = GPT(config).eval()
    prompt = torch.randint(1, 40, (1, 7))
    alone, _ = model(prompt)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), prompt], dim=1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 7)], dim=1)
    together, _ = model(padded, attention_mask=mask)
    torch.testing.assert_close(together[:, 5:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_cached_chunks_give_the_full_forward_logits(variant):
    torch.manual_seed(0)
    config = GPTConfig(**TINY) if variant == "gpt2" else GPTConfig.llama_style(**TINY)
    model = GPT(config).eval()
    idx = torch.randint(0, 40, (2, 20))
    full, _ = model(idx)
    cache = KVCache(config, 2, 20, "cpu", torch.float32)
    parts = [
        model(chunk, cache=cache)[0]
        for chunk in (idx[:, :8], idx[:, 8:13], idx[:, 13:14], idx[:, 14:])
    ]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_bad_configs_and_overlong_inputs_are_named():
    with pytest.raises(ValueError, match="divisible by model.n_head"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="model.norm must be one of"):
        GPTConfig(norm="batchnorm")
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="longer than block_size 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
