"""Helpers of the evaluation tests (a module, not conftest, so tests can import it)."""

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
