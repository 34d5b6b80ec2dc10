"""A toy preference the tiny test models learn in seconds, shared by the DPO and reward tests.

The chosen answer uses the letters a-h, the rejected one i-p.
"""

import random

import torch

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
from engine.models.gpt import GPT, GPTConfig

GOOD, BAD = "abcdefgh", "ijklmnop"


def toy_pairs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def word(letters: str) -> str:
        return "".join(rng.choice(letters) for _ in range(3))

    return [
        {"prompt": word(GOOD + BAD), "chosen": word(GOOD), "rejected": word(BAD)}
        for _ in range(count)
    ]


def toy_tokenizer() -> CharTokenizer:
    return CharTokenizer.train(GOOD + BAD, special_tokens=DEFAULT_SPECIAL_TOKENS)


def tiny_gpt(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
