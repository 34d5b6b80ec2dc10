"""Helpers of the evaluation tests (a module, not conftest, so tests can import it; the
platform's and the worker's evaluate tests import it as tests.engine.evaluate.eval_helpers).

tokenizer = ascii_tokenizer()                          # every printable ASCII character
shards = write_shards(folder, tokenizer, TRAIN_DOCS, VAL_DOCS)
model_dir = tiny_export(folder, tokenizer, shards / "tokenizer.json")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRAIN_DOCS = [
    "Now is the winter of our discontent made glorious summer by this sun of York; "
    "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise "
    "him. The evil that men do lives after them; the good is oft interred with their bones.",
]
VAL_DOCS = [
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles."
]


# The figures a text evaluation reports as floats (besides per-type counts).
TEXT_FIGURES = (
    "val_loss",
    "perplexity",
    "toxicity_share",
    "pii_share",
    "repetition",
    "memorisation_share",
)


@dataclass
class TinyText:
    model_dir: Path
    shards: Path
    tokenizer: object


def write_shards(folder: Path, tokenizer, train: list[str], val: list[str]) -> Path:
    from engine.data.shards import ShardWriter

    with ShardWriter(
        folder,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        tokenizer_file="tokenizer.json",
    ) as writer:
        tokenizer.save(folder / "tokenizer.json")
        for doc in train:
            writer.add(tokenizer.encode(doc), split="train")
        for doc in val:
            writer.add(tokenizer.encode(doc), split="val")
    return folder


def ascii_tokenizer():
    """A character tokenizer knowing every printable ASCII character and newline (prompts,
    PII and lexicon words all encode), with the chat special tokens (end of text is 0)."""
    from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer

    alphabet = "".join(chr(c) for c in range(32, 127)) + "\n"
    return CharTokenizer.train(alphabet, special_tokens=DEFAULT_SPECIAL_TOKENS)


def tiny_export(folder: Path, tokenizer, tokenizer_file: Path) -> Path:
    """A random 1-layer GPT (seed 0, block size 32) exported with `tokenizer_file`."""
    import torch

    from engine.models.gpt import GPT, GPTConfig
    from engine.train.export import export_model

    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16
    )
    return export_model(GPT(config), folder, tokenizer_file=tokenizer_file, eot_id=tokenizer.eot_id)
