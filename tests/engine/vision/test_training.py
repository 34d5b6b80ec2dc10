"""A few training steps make each model better at its job."""

from __future__ import annotations

import pytest
import torch

from engine.vision.data import load_digits_split
from engine.vision.evaluate import balanced_labels, sample_in_batches
from engine.vision.recipes import make_recipe


def _fixed_batch(size: int = 64):
    split = load_digits_split(8)
    return split.train_images[:size], split.train_labels[:size]


def _train(recipe, steps: int, batch_size: int = 32, seed: int = 0) -> list[dict]:
    split = load_digits_split(8)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps):
        index = torch.randint(0, split.train_images.shape[0], (batch_size,), generator=generator)
        history.append(
            recipe.train_step(split.train_images[index], split.train_labels[index], step, generator)
        )
    return history


def test_diffusion_loss_falls(make_config):
    recipe = make_recipe(make_config("diffusion"), torch.device("cpu"))
    x, y = _fixed_batch()

    def held_loss() -> float:
        with torch.no_grad():
            return recipe.diffusion.training_loss(
                recipe.net, x, y, recipe.net.null_class, 0.0, torch.Generator().manual_seed(1)
            ).item()

    before = held_loss()
    _train(recipe, 40)
    assert held_loss() < 0.6 * before


def test_vae_negative_elbo_falls(make_config):
    recipe = make_recipe(make_config("vae"), torch.device("cpu"))
    x, y = _fixed_batch()

    def neg_elbo() -> float:
        with torch.no_grad():
            return -recipe.vae.elbo_terms(x, y, torch.Generator().manual_seed(1)).elbo.item()

    before = neg_elbo()
    history = _train(recipe, 40)
    assert neg_elbo() < 0.8 * before
    assert history[-1]["train/kl_weight"] == 1.0  # warm-up of 10 steps is over


@pytest.mark.slow
def test_gan_samples_move_towards_real_digits(make_config, evaluator):
    recipe = make_recipe(make_config("gan", model={"r1_gamma": 1.0}), torch.device("cpu"))
    labels = balanced_labels(20)
    before = evaluator.frechet_distance(sample_in_batches(recipe, labels, seed=0))
    history = _train(recipe, 60)
    after = evaluator.frechet_distance(sample_in_batches(recipe, labels, seed=0))
    assert after < 0.7 * before
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert any(h["train/r1"] > 0 for h in history)  # the lazy R1 penalty was applied
