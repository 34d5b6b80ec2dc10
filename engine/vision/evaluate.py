"""Scores for generated digits: a classifier trained on the real ones judges them.

    evaluator = Evaluator.load_or_train("var/vision/evaluator.pt")
    scores = evaluator.score(samples, requested_labels)
    # {"eval/accuracy": 0.97, "eval/frechet_distance": 3.1, "eval/samples": 500}
    evaluator.reference()   # the same scores for real held-out digits, and for noise

- accuracy: how often a sample is recognised as the digit that was asked for;
- Frechet distance (Heusel et al. 2017's FID recipe, with our classifier in place of
  Inception): ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)`` between Gaussians fitted
  to the classifier's penultimate features of the samples and of the held-out real digits.

The classifier is trained on the training split only, at the digits' native 8x8; samples
of another size are area-resized to 8x8 first. Lower distance is better; real training
digits against held-out ones give the floor that sampling noise allows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.vision.data import (
    NATIVE_SIZE,
    NUM_CLASSES,
    DigitsSplit,
    VisionInputError,
    check_images,
    load_digits_split,
    resize,
)

FEATURES = 64


class DigitClassifier(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4 -> 2
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 2 * 2, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel: the classifier should not depend on exact placement."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + NATIVE_SIZE, dx : dx + NATIVE_SIZE]


def train_classifier(split: DigitsSplit, epochs: int = 30, seed: int = 0) -> DigitClassifier:
    """A few seconds on a CPU; deterministic for a given seed."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    images, labels = split.train_images, split.train_labels
    for _ in range(epochs):
        model.train()
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, order.numel(), 64):
            index = order[start : start + 64]
            loss = F.cross_entropy(model(_shift(images[index], generator)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def frechet_distance(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Between N(mu_a, cov_a) and N(mu_b, cov_b). Tr((A B)^1/2) equals Tr((A^1/2 B A^1/2)^1/2),
    whose argument is symmetric PSD: an eigendecomposition, no complex sqrtm round-off."""
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def _stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


@dataclass
class Evaluator:
    classifier: DigitClassifier
    split: DigitsSplit  # native 8x8

    def __post_init__(self) -> None:
        self._heldout_stats = _stats(self.features(self.split.heldout_images))

    @classmethod
    def load_or_train(
        cls,
        cache_path: str | os.PathLike | None = None,
        heldout_fraction: float = 0.2,
        split_seed: int = 0,
        epochs: int = 30,
    ) -> Evaluator:
        """Train the classifier once per split and keep it (written atomically) for reuse."""
        split = load_digits_split(NATIVE_SIZE, heldout_fraction, split_seed)
        key = {
            "heldout_fraction": heldout_fraction,
            "split_seed": split_seed,
            "epochs": epochs,
            "version": 1,
        }
        if cache_path is not None and Path(cache_path).is_file():
            saved = torch.load(cache_path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                classifier = DigitClassifier()
                classifier.load_state_dict(saved["state"])
                return cls(classifier.eval(), split)
        classifier = train_classifier(split, epochs=epochs, seed=split_seed)
        if cache_path is not None:
            path = Path(cache_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save({"key": key, "state": classifier.state_dict()}, tmp)
            os.replace(tmp, path)
        return cls(classifier, split)

    @torch.no_grad()
    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            check_images(images, NATIVE_SIZE)  # raises, naming the expected shape
        size = images.shape[-1]
        if images.shape[-2] != size or size < NATIVE_SIZE:
            raise VisionInputError(
                f"images must be square and at least {NATIVE_SIZE}x{NATIVE_SIZE}, "
                f"got {tuple(images.shape)}"
            )
        check_images(images, size)  # one channel
        return resize(images.detach().float().cpu().clamp(-1, 1), NATIVE_SIZE)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        x = self._prepare(images)
        return torch.cat([self.classifier.features(chunk) for chunk in x.split(512)]).numpy()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = self._prepare(images)
        return torch.cat([self.classifier(chunk).argmax(1) for chunk in x.split(512)])

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(images) == labels.cpu()).float().mean())

    def frechet_distance(self, images: torch.Tensor) -> float:
        if images.shape[0] < 2:
            raise ValueError("the Frechet distance needs at least 2 images")
        return frechet_distance(*_stats(self.features(images)), *self._heldout_stats)

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {
            "eval/accuracy": self.accuracy(images, labels),
            "eval/frechet_distance": self.frechet_distance(images),
            "eval/samples": float(images.shape[0]),
        }

    def reference(self, seed: int = 0) -> dict[str, Any]:
        """Real training digits (the floor) and uniform noise (the ceiling), same scorer."""
        split = self.split
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(split.heldout_images.shape, generator=generator) * 2 - 1
        noise_labels = torch.randint(0, NUM_CLASSES, (noise.shape[0],), generator=generator)
        return {
            "heldout_accuracy": self.accuracy(split.heldout_images, split.heldout_labels),
            "train_real": self.score(split.train_images, split.train_labels),
            "noise": self.score(noise, noise_labels),
        }


def balanced_labels(per_class: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """0, 1, ..., 9, 0, 1, ...: ``per_class`` of each digit."""
    return torch.arange(num_classes).repeat(per_class)


def sample_in_batches(
    recipe, labels: torch.Tensor, seed: int = 0, batch_size: int = 500, **options: Any
) -> torch.Tensor:
    """Samples for ``labels`` from a recipe, batch by batch (bounded memory), on CPU."""
    generator = torch.Generator(device=recipe.device).manual_seed(seed)
    chunks = []
    for chunk in labels.split(batch_size):
        chunks.append(recipe.sample(chunk.to(recipe.device), generator, **options).cpu())
    return torch.cat(chunks)
