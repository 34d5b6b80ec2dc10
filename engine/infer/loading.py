"""Load a model and its tokenizer for generation from wherever training left them.

model, tokenizer = load_for_generation("var/runs/shakespeare-char")   # best, else latest
model, tokenizer = load_for_generation(".../checkpoints/step_002000")  # one checkpoint
model, tokenizer = load_for_generation("var/export/shakespeare")       # an export folder
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.data.tokenizers import load_tokenizer
from engine.models.gpt import GPTConfig
from engine.train.checkpoint import Checkpointer, CheckpointError, load_checkpoint_model
from engine.train.export import ExportError, import_model


class LoadError(ValueError):
    """Nothing loadable at the path, or a tokenizer that does not fit the model."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, an export folder, or a run folder (its best, else latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path} does not exist")
    if (path / "meta.json").is_file() or (path / "config.json").is_file():
        return path
    checkpointer = Checkpointer(path)
    best = checkpointer.best()
    if best is not None and checkpointer.path_for(best["step"]).is_dir():
        return checkpointer.path_for(best["step"])
    latest = checkpointer.latest()
    if latest is None:
        raise LoadError(
            f"{path} holds no checkpoint (no meta.json, config.json or checkpoints/step_*)"
        )
    return latest


def load_for_generation(path: str | Path, tokenizer_path: str | Path | None = None):
    """(model in eval mode, tokenizer); LoadError names what does not fit."""
    folder = resolve_checkpoint(path)
    try:
        if (folder / "meta.json").is_file():
            model, tokenizer_file = load_checkpoint_model(folder)
        else:
            model = import_model(folder)
            tokenizer_file = folder / "tokenizer.json"
    except (CheckpointError, ExportError, json.JSONDecodeError) as error:
        raise LoadError(str(error)) from None
    tokenizer_file = Path(tokenizer_path) if tokenizer_path else tokenizer_file
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        raise LoadError(f"{folder} has no tokenizer.json; pass one with --tokenizer")
    try:
        tokenizer = load_tokenizer(tokenizer_file)
    except (OSError, ValueError) as error:
        raise LoadError(f"tokenizer {tokenizer_file}: {error}") from None
    check_vocab(tokenizer, model.config, str(tokenizer_file))
    model.eval()
    return model, tokenizer


def check_vocab(tokenizer, config: GPTConfig, name: str = "the tokenizer") -> None:
    """A tokenizer fits a model whose embedding has a row for each of its ids (padding allowed)."""
    if tokenizer.vocab_size > config.vocab_size:
        raise LoadError(
            f"{name} has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{config.vocab_size}; this tokenizer does not belong to this model"
        )
