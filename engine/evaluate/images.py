"""Evaluation of an image generator (diffusion, GAN, VAE) on the 8x8 digits.

Reuses engine/vision/evaluate.py: ``per_class`` samples of each digit are generated, the
classifier trained on the real digits says which digit each one shows (recognition: the
share recognised as the digit asked for, overall and per digit), and the Frechet
distance between the classifier's features of the samples and of the held-out real
digits says how real they look (lower is better).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.evaluate.config import EvalConfig, EvalError, eval_device
from engine.evaluate.result import EvalResult, PhaseHook, Phases


def evaluate_images(
    checkpoint: str | Path,
    config: EvalConfig,
    *,
    classifier_cache: str | Path | None = None,
    evaluator=None,
    on_phase: PhaseHook | None = None,
) -> EvalResult:
    """``classifier_cache``: where the digit classifier is kept between evaluations;
    ``evaluator``: an engine.vision.evaluate.Evaluator to score with instead (its split
    must be the model's)."""
    from engine.vision.checkpoint import CheckpointError
    from engine.vision.data import NUM_CLASSES, VisionInputError
    from engine.vision.evaluate import Evaluator, balanced_labels, sample_in_batches
    from engine.vision.train import TrainingError, load_recipe

    phases = Phases(on_phase)
    eval_device(config.device)  # a clear message when the device is not there
    with phases.phase("loading the model", 0.05):
        try:
            recipe, payload = load_recipe(checkpoint, device=config.device)
        except (CheckpointError, TrainingError, VisionInputError) as error:
            raise EvalError(f"the image model does not load: {error}") from None
        data = recipe.config.data
    with phases.phase("the digit classifier", 0.15):
        if evaluator is None:
            evaluator = Evaluator.load_or_train(
                classifier_cache, data.heldout_fraction, data.split_seed
            )
    labels = balanced_labels(config.per_class)
    with phases.phase("generating samples", 0.3):
        images = sample_in_batches(recipe, labels, seed=config.seed)
    with phases.phase("scoring samples", 0.9):
        predicted = evaluator.predict(images)
        correct = predicted == labels
        metrics = {"recognition": float(correct.float().mean())}
        for digit in range(NUM_CLASSES):
            mine = labels == digit
            metrics[f"recognition_{digit}"] = float(correct[mine].float().mean())
        metrics["frechet"] = evaluator.frechet_distance(images)
        metrics["samples"] = float(len(labels))
    confusion = [[0] * NUM_CLASSES for _ in range(NUM_CLASSES)]
    for asked, seen in zip(labels.tolist(), predicted.tolist(), strict=True):
        confusion[asked][seen] += 1
    details = {
        "kind": "image",
        "model_kind": payload.get("kind"),
        "step": payload.get("step"),
        "settings": {
            **{k: v for k, v in dataclasses.asdict(config).items() if k in ("per_class", "seed")},
            "device": config.device,
        },
        "per_class": {str(digit): metrics[f"recognition_{digit}"] for digit in range(NUM_CLASSES)},
        "confusion": confusion,  # rows: the digit asked for; columns: the digit recognised
        "seconds": phases.seconds,
    }
    return EvalResult(metrics=metrics, details=details)
