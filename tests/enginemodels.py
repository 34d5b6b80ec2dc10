"""Tiny engine models as the registry holds them, for tests that need real files.

folder = text_export(tmp_path / "gpt")                 # config.json, model.safetensors, tokenizer.json
folder = text_export(tmp_path / "llama", llama=True)   # the engine's own layout
checkpoint = vision_checkpoint(tmp_path / "gan")       # one .pt file of a 2-step GAN run
model = trained_gpt(tokenizer)                         # a tiny GPT trained on SPEECH (cached)
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


SPEECH = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
_TRAINED: dict[tuple, object] = {}


def trained_gpt(tokenizer, variant: str = "gpt2", block_size: int = 64):
    """A tiny GPT (GPT-2, or "llama" style) trained on SPEECH for 60 steps, once per
    tokenizer, variant and size: its greedy continuations are real text with clear margins
    between the top choices, and depend on attention over the whole prompt."""
    import torch

    from engine.models.gpt import GPT, GPTConfig

    key = (variant, block_size, tokenizer.vocab_size, tuple(tokenizer.encode(SPEECH)))
    if key not in _TRAINED:
        torch.manual_seed(3)
        sizes = dict(
            vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32
        )
        config = GPTConfig(**sizes) if variant == "gpt2" else GPTConfig.llama_style(**sizes)
        model = GPT(config)
        ids = torch.tensor([tokenizer.encode(SPEECH * 2)])[:, : block_size + 1]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(60):
            _, loss = model(ids[:, :-1], ids[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _TRAINED[key] = model.eval()
    return _TRAINED[key]
