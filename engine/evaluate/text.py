"""Evaluation of a text model: held-out loss, scored samples, memorisation.

    result = evaluate_text(model_dir, eval_shards, train_shards, EvalConfig(), on_phase=hook)

- held-out loss: mean next-token cross-entropy over consecutive windows of the model's
  context from the start of the val split (at most ``eval_batches`` batches), and its
  exponential, the perplexity;
- samples: ``samples`` completions of the prompts (in turn), generated with the engine's
  KV-cache generator (engine/infer/generate.py) at a fixed seed, each scored with the data
  pipeline's own scorers: the toxicity lexicon (share of samples above the filter's
  threshold), PII detection (samples with any, counts per type), the Gopher repetition
  filter (share of samples it would drop);
- memorisation: the share of the samples' ``span_chars``-character spans that occur
  verbatim in the training text (engine/evaluate/memorisation.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from engine.data.documents import Document
from engine.data.pii import PII_TYPES, PIIConfig, PIIRedactor
from engine.data.quality import RepetitionConfig, RepetitionFilter
from engine.data.shards import ShardError, TokenLoader
from engine.data.tokenizers import load_tokenizer
from engine.data.toxicity import DEFAULT_LEXICON, LexiconScorer, load_lexicon
from engine.evaluate.config import EvalConfig, EvalError, eval_device
from engine.evaluate.memorisation import SpanIndex, load_split, training_text
from engine.evaluate.result import EvalResult, PhaseHook, Phases

SAMPLE_BATCH = 64  # completions generated together at most (bounded memory)


def load_model(model_dir: str | Path, device: torch.device):
    """(model in eval mode on ``device``, tokenizer) of an exported model folder."""
    from engine.infer.loading import LoadError, load_for_generation

    try:
        model, tokenizer = load_for_generation(model_dir)
    except LoadError as error:
        raise EvalError(f"the model does not load: {error}") from None
    return model.to(device), tokenizer


def check_same_tokenizer(tokenizer, shards_dir: Path, manifest) -> None:
    """The shards must be tokenized as the model's tokenizer does, or the loss is noise."""
    if manifest.vocab_size > tokenizer.vocab_size:
        raise EvalError(
            f"the dataset's tokens have a vocabulary of {manifest.vocab_size} but the model's "
            f"tokenizer has {tokenizer.vocab_size}: it was tokenized for another model"
        )
    path = manifest.tokenizer_path
    if path is None or not path.is_file():
        return
    theirs = load_tokenizer(path)
    ids = range(min(theirs.vocab_size, tokenizer.vocab_size))
    if theirs.vocab_size != tokenizer.vocab_size or any(
        theirs.decode([i]) != tokenizer.decode([i]) for i in ids
    ):
        raise EvalError(
            "the dataset version was tokenized with another tokenizer than the model's; "
            "evaluate on a version tokenized like the model's training data"
        )


@torch.inference_mode()
def held_out_loss(model, shards_dir: str | Path, config: EvalConfig, tokenizer=None) -> dict:
    """{"val_loss", "perplexity", "val_tokens", "val_batches"} on the val split."""
    try:
        manifest = load_split(shards_dir, "val")
    except ShardError as error:
        raise EvalError(f"the evaluation shards: {error}") from None
    if tokenizer is not None:
        check_same_tokenizer(tokenizer, Path(shards_dir), manifest)
    block = model.config.block_size
    available = manifest.num_tokens("val")
    windows = (available - 1) // block if available else 0
    if windows < 1:
        raise EvalError(
            f"the val split holds {available} tokens, fewer than one window of the model's "
            f"context + 1 ({block + 1}); tokenize the data with a larger val_fraction"
        )
    batch_size = min(config.batch_size, windows)
    batches = min(config.eval_batches, windows // batch_size)
    loader = TokenLoader(
        manifest, "val", batch_size=batch_size, block_size=block, order="sequential"
    )
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for _ in range(batches):
        x, y = loader.next_batch()
        x = torch.from_numpy(x).to(device)
        y = torch.from_numpy(y).to(device)
        _, loss = model(x, y)
        total += float(loss) * y.numel()
        tokens += y.numel()
    val_loss = total / tokens
    return {
        "val_loss": val_loss,
        "perplexity": math.exp(min(val_loss, 700.0)),
        "val_tokens": tokens,
        "val_batches": batches,
    }


def generate_samples(model, tokenizer, config: EvalConfig) -> list[dict[str, str]]:
    """``config.samples`` completions, prompt i mod len(prompts) for sample i."""
    from engine.infer.generate import Generator, SamplingError, SamplingParams

    prompts = [config.prompts[i % len(config.prompts)] for i in range(config.samples)]
    for prompt in dict.fromkeys(prompts):
        try:
            tokenizer.encode(prompt)
        except ValueError as error:
            raise EvalError(
                f"prompt {prompt!r} does not fit the model's tokenizer: {error}"
            ) from None
    generator = Generator(model, tokenizer)
    samples = []
    for batch, start in enumerate(range(0, len(prompts), SAMPLE_BATCH)):
        try:
            params = SamplingParams(
                max_new_tokens=config.sample_tokens,
                temperature=config.temperature,
                top_k=config.top_k,
                seed=config.seed + batch,
            )
            result = generator.generate(prompts[start : start + SAMPLE_BATCH], params)
        except SamplingError as error:
            raise EvalError(str(error)) from None
        samples += [{"prompt": g.prompt, "text": g.text} for g in result.generations]
    return samples


class SampleScorer:
    """The data pipeline's toxicity, PII and repetition checks, applied to one text."""

    def __init__(self, toxicity_threshold: float) -> None:
        self.toxicity = LexiconScorer(load_lexicon(DEFAULT_LEXICON))
        self.threshold = toxicity_threshold
        self.pii = PIIRedactor(PIIConfig())
        self.repetition = RepetitionFilter(RepetitionConfig())

    def score(self, text: str) -> dict[str, Any]:
        toxicity = self.toxicity.score(text)
        _, found = self.pii.redact(text)
        return {
            "toxicity": round(toxicity, 4),
            "toxic": toxicity > self.threshold,
            "pii": dict(sorted(found.items())),
            "repetition": self.repetition(Document(text)),  # the filter's reason, or None
        }


def score_samples(samples: list[dict[str, Any]], config: EvalConfig) -> dict[str, float]:
    """Adds each sample's scores to it; returns the flat figures over all samples."""
    scorer = SampleScorer(config.toxicity_threshold)
    pii_types: Counter[str] = Counter()
    for sample in samples:
        sample.update(scorer.score(sample["text"]))
        pii_types.update(sample["pii"])
    count = len(samples)
    metrics = {
        "toxicity_share": sum(s["toxic"] for s in samples) / count,
        "toxicity_mean": sum(s["toxicity"] for s in samples) / count,
        "pii_share": sum(bool(s["pii"]) for s in samples) / count,
        "pii_found": float(sum(pii_types.values())),
        "repetition": sum(s["repetition"] is not None for s in samples) / count,
    }
    metrics.update({f"pii_{kind.lower()}": float(pii_types[kind]) for kind in PII_TYPES})
    return metrics


def training_index(shards_dir: str | Path, tokenizer, config: EvalConfig) -> SpanIndex:
    try:
        manifest = load_split(shards_dir, "train")
    except ShardError as error:
        raise EvalError(f"the training shards: {error}") from None
    text, capped = training_text(manifest, tokenizer, config.max_train_chars)
    return SpanIndex.build(text, config.span_chars, capped=capped)


def memorisation(samples: list[dict[str, Any]], index: SpanIndex) -> dict[str, float]:
    """Adds each sample's found/total spans; returns the share over all samples' spans."""
    found_total, spans_total = 0, 0
    for sample in samples:
        found, spans = index.found(sample["text"])
        sample["memorised_spans"], sample["spans"] = found, spans
        found_total += found
        spans_total += spans
    return {
        "memorisation_share": found_total / spans_total if spans_total else 0.0,
        "memorisation_spans": float(spans_total),
    }


def evaluate_text(
    model_dir: str | Path,
    eval_shards: str | Path,
    train_shards: str | Path | None,
    config: EvalConfig,
    *,
    on_phase: PhaseHook | None = None,
) -> EvalResult:
    """Every text figure; ``train_shards`` None: no memorisation check (said in details)."""
    phases = Phases(on_phase)
    device = eval_device(config.device)
    with phases.phase("loading the model", 0.05):
        model, tokenizer = load_model(model_dir, device)
    with phases.phase("held-out loss", 0.1):
        val = held_out_loss(model, eval_shards, config, tokenizer)
    with phases.phase("generating samples", 0.35):
        samples = generate_samples(model, tokenizer, config)
    with phases.phase("scoring samples", 0.65):
        scores = score_samples(samples, config)
    metrics: dict[str, float] = {
        "val_loss": val["val_loss"],
        "perplexity": val["perplexity"],
        **scores,
        "samples": float(len(samples)),
    }
    memorised: dict[str, Any] = {"checked": False}
    if train_shards is not None:
        with phases.phase("indexing the training text", 0.7):
            index = training_index(train_shards, tokenizer, config)
        with phases.phase("memorisation", 0.95):
            metrics.update(memorisation(samples, index))
        memorised = {
            "checked": True,
            "span_chars": index.span,
            "training_chars": index.chars,
            "capped": index.capped,
            "distinct_spans": len(index),
        }
        if index.capped:
            memorised["note"] = (
                f"the training text was cut at {config.max_train_chars:,} characters "
                "(max_train_chars): spans learnt from the rest are not counted"
            )
    else:
        memorised["note"] = "no training data known for this model: memorisation not checked"
    details = {
        "kind": "text",
        "settings": dataclasses.asdict(config),
        "val": {"tokens": val["val_tokens"], "batches": val["val_batches"]},
        "memorisation": memorised,
        "samples": samples,
        "seconds": phases.seconds,
    }
    return EvalResult(metrics=metrics, details=details)
