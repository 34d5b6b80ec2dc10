"""The evaluation's settings: one dataclass, the single source of the `evaluate` job's
parameters (engine/jobparams.py turns its field metadata into the job's JSON Schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.configfile import build, setting
from engine.data.toxicity import ToxicityConfig

# Continued by every text model: character names and openings from the plays, plus a bare
# newline (a new line of any text). Prompts cycle: sample i continues prompt i mod len.
DEFAULT_PROMPTS = [
    "\n",
    "ROMEO:",
    "JULIET:",
    "KING HENRY:",
    "First Citizen:",
    "To be, or not to be",
    "My lord, ",
    "What news",
]


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


@dataclass
class EvalConfig:
    # Held-out loss (text models).
    eval_batches: int = setting(
        20, minimum=1, maximum=10_000, help="validation batches scored at most (held-out loss)"
    )
    batch_size: int = setting(
        16, minimum=1, maximum=1024, help="sequences of the model's context per batch"
    )
    # Samples (text models).
    samples: int = setting(64, minimum=1, maximum=1024, help="samples generated and scored")
    prompts: list[str] = setting(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        minItems=1,
        maxItems=64,
        minLength=1,
        maxLength=500,
        help="prompts the samples continue, in turn",
    )
    sample_tokens: int = setting(
        100, minimum=1, maximum=4000, help="tokens generated per sample at most"
    )
    temperature: float = setting(
        0.8, minimum=0.0, maximum=2.0, help="sampling temperature (0: greedy)"
    )
    top_k: int = setting(
        50, minimum=1, maximum=1_000_000, help="sample among the k most likely tokens"
    )
    seed: int = setting(
        1337, minimum=0, maximum=2**31 - 1, help="the sampler's seed: same model, same samples"
    )
    toxicity_threshold: float = setting(
        ToxicityConfig().threshold,
        minimum=0.0,
        maximum=1.0,
        help="a sample is toxic above this share of lexicon words (the pipeline's filter)",
    )
    # Memorisation (text models).
    span_chars: int = setting(
        50, minimum=8, maximum=1000, help="memorisation: length of the spans looked up"
    )
    max_train_chars: int = setting(
        10_000_000,
        minimum=1000,
        maximum=200_000_000,
        help="memorisation: training text indexed at most (characters; the rest is left out)",
    )
    # Image models.
    per_class: int = setting(
        100, minimum=2, maximum=1000, help="image models: samples generated per digit"
    )
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", help="where the model runs (auto: a GPU when there is one)"
    )


def eval_device(name: str):
    """The torch device of ``device`` ("auto": CUDA when there is one)."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise EvalError("device is 'cuda' but there is no CUDA device here; use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def eval_config(raw: dict[str, Any] | None = None) -> EvalConfig:
    """An EvalConfig from a mapping, every key and range checked (EvalError names the key)."""
    return build(EvalConfig, raw or {}, EvalError)
