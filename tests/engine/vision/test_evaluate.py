"""The evaluation scores real held-out digits well and noise badly; Frechet distance maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.vision.data import VisionInputError, load_digits_split
from engine.vision.evaluate import frechet_distance


def test_real_heldout_digits_are_recognised_and_close(evaluator):
    split = evaluator.split
    assert evaluator.accuracy(split.heldout_images, split.heldout_labels) > 0.9
    real = evaluator.score(split.train_images, split.train_labels)
    assert real["eval/accuracy"] > 0.9
    assert real["eval/frechet_distance"] < 10


def test_noise_scores_low_accuracy_and_high_distance(evaluator):
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(400, 1, 8, 8, generator=generator) * 2 - 1
    labels = torch.randint(0, 10, (400,), generator=generator)
    noisy = evaluator.score(noise, labels)
    real = evaluator.score(evaluator.split.train_images[:400], evaluator.split.train_labels[:400])
    assert noisy["eval/accuracy"] < 0.3
    assert noisy["eval/frechet_distance"] > 10 * real["eval/frechet_distance"]


def test_wrong_labels_lower_accuracy_but_not_distance(evaluator):
    split = evaluator.split
    shifted = (split.train_labels + 1) % 10
    assert evaluator.accuracy(split.train_images, shifted) < 0.1


def test_upscaled_digits_are_scored_at_native_size(evaluator):
    up = load_digits_split(image_size=16)
    assert evaluator.accuracy(up.heldout_images, up.heldout_labels) > 0.9


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    cov = np.cov(rng.normal(size=(500, 4)), rowvar=False)
    mu = rng.normal(size=4)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-6)
    # Diagonal covariances: sum (sqrt(a) - sqrt(b))^2 plus the squared mean difference.
    a, b = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 1.0**2 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_distance(np.zeros(2), a, np.array([1.0, 0.0]), b) == pytest.approx(expected)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((4, 3, 8, 8), "1 channel"),
        ((4, 8, 8), "shape"),
        ((4, 1, 4, 4), "at least 8x8"),
        ((4, 1, 8, 16), "square"),
    ],
)
def test_images_of_the_wrong_shape_are_refused(evaluator, shape, message):
    with pytest.raises(VisionInputError, match=message):
        evaluator.score(torch.zeros(shape), torch.zeros(4, dtype=torch.long))
