"""Tiny engine models as the registry holds them, for tests that need real files.

folder = text_export(tmp_path / "gpt")                 # config.json, model.safetensors, tokenizer.json
folder = text_export(tmp_path / "llama", llama=True)   # the engine's own layout
checkpoint = vision_checkpoint(tmp_path / "gan")       # one .pt file of a 2-step GAN run
"""

from __future__ import annotations

from pathlib import Path

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
)


def text_export(folder: Path, *, llama: bool = False, seed: int = 0) -> Path:
    """A random 1-layer GPT (GPT-2, or the Llama-style variant) exported with its tokenizer."""
    import torch

    from engine.data.tokenizers import CharTokenizer
    from engine.models.gpt import GPT, GPTConfig
    from engine.train.export import export_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = CharTokenizer.train(TEXT)
    tokenizer_file = folder.parent / f"{folder.name}-tokenizer.json"
    tokenizer.save(tokenizer_file)
    shape = dict(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    config = GPTConfig.llama_style(**shape) if llama else GPTConfig(**shape)
    torch.manual_seed(seed)
    return export_model(GPT(config), folder, tokenizer_file=tokenizer_file, eot_id=tokenizer.eot_id)


def vision_checkpoint(folder: Path, kind: str = "gan") -> Path:
    """The checkpoint file of a 2-step run of a tiny image generator on the 8x8 digits."""
    from engine.vision.train import train
    from tests.engine.vision.vision_helpers import tiny_config

    config = tiny_config(kind, Path(folder) / "run", train={"steps": 2, "checkpoint_interval": 2})
    summary = train(config)
    return Path(summary.checkpoint)
