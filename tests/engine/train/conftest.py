"""Tiny real data for the trainer tests: Hamlet as character-level token shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import tiny_config_dict

from engine.data.corpora import shakespeare_files
from engine.data.shards import ShardWriter
from engine.data.tokenizers import CharTokenizer
from engine.train.config import RunConfig, config_from_dict

# One intra-op thread: the two cores are shared, and tiny models only lose from more.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def char_shards(tmp_path_factory) -> Path:
    """60k characters of Hamlet for training, 8k for validation, in several shards."""
    hamlet = next(p for p in shakespeare_files("modern") if p.name == "hamlet_gut.txt")
    text = hamlet.read_text(encoding="utf-8")[:68_000]
    tokenizer = CharTokenizer.train(text)
    out = tmp_path_factory.mktemp("hamlet-char")
    with ShardWriter(
        out,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        tokenizer_file="tokenizer.json",
        shard_tokens=25_000,
    ) as writer:
        tokenizer.save(out / "tokenizer.json")
        writer.add(tokenizer.encode(text[:60_000]), split="train")
        writer.add(tokenizer.encode(text[60_000:]), split="val")
    return out


@pytest.fixture
def make_config(char_shards, tmp_path):
    def make(run: str = "run", **sections) -> RunConfig:
        return config_from_dict(tiny_config_dict(char_shards, tmp_path / run, **sections))

    return make


@pytest.fixture
def write_config(char_shards, tmp_path):
    """Write a tiny config as YAML (for the command line and torchrun); returns its path."""

    def write(run: str = "run", **sections) -> Path:
        path = tmp_path / f"{run}.yaml"
        path.write_text(yaml.safe_dump(tiny_config_dict(char_shards, tmp_path / run, **sections)))
        return path

    return write
