"""Tiny GPTs shared by the serving tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

import torch

from engine.models.gpt import GPT, GPTConfig

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


_TRAINED: dict[str, GPT] = {}


def trained_model(tokenizer, variant: str = "gpt2") -> GPT:
    """Trained on TEXT for 60 steps: greedy continuations are real text with clear margins
    between the top choices, and depend on attention over the whole prompt."""
    if variant not in _TRAINED:
        torch.manual_seed(3)
        sizes = dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
        config = GPTConfig(**sizes) if variant == "gpt2" else GPTConfig.llama_style(**sizes)
        model = GPT(config)
        ids = torch.tensor([tokenizer.encode(TEXT * 2)])[:, :65]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(60):
            _, loss = model(ids[:, :-1], ids[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _TRAINED[variant] = model.eval()
    return _TRAINED[variant]
