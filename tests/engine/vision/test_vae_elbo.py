"""The VAE's ELBO terms: closed-form KL, the reconstruction term, KL warm-up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.vision.config import VAEConfig
from engine.vision.vae import ConditionalVAE, gaussian_kl, kl_weight


def test_kl_closed_form_matches_monte_carlo():
    mu = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[0.0, -1.0, 0.7]])
    generator = torch.Generator().manual_seed(0)
    z = mu + (0.5 * logvar).exp() * torch.randn(200_000, 3, generator=generator)
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert gaussian_kl(mu, logvar).item() == pytest.approx((log_q - log_p).mean().item(), rel=0.02)


def test_kl_is_zero_only_for_the_prior():
    assert gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0
    assert gaussian_kl(torch.full((1, 4), 0.1), torch.zeros(1, 4)).item() > 0.0


def test_elbo_terms_are_a_summed_cross_entropy_and_kl():
    torch.manual_seed(0)
    vae = ConditionalVAE(VAEConfig(latent_dim=4, channels=8), image_size=8)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 4])
    terms = vae.elbo_terms(x, labels, torch.Generator().manual_seed(1))
    bce = F.binary_cross_entropy_with_logits(terms.logits, (x + 1) / 2, reduction="sum") / 5
    mu, logvar = vae.encode(x, labels)
    torch.testing.assert_close(terms.reconstruction, bce)
    torch.testing.assert_close(terms.kl, gaussian_kl(mu, logvar).mean())
    torch.testing.assert_close(terms.elbo, -(bce + terms.kl))
    assert terms.kl.item() >= 0


def test_reparameterisation_passes_gradients_to_mean_and_variance():
    mu = torch.zeros(3, 2, requires_grad=True)
    logvar = torch.zeros(3, 2, requires_grad=True)
    ConditionalVAE.reparameterise(mu, logvar).pow(2).sum().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_kl_weight_warms_up_linearly_to_one():
    assert [kl_weight(step, 100) for step in (0, 50, 100, 400)] == [0.0, 0.5, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


def test_samples_and_reconstructions_are_images_in_range():
    vae = ConditionalVAE(VAEConfig(latent_dim=4, channels=8), image_size=16)
    labels = torch.tensor([7, 7])
    samples = vae.sample(labels, torch.Generator().manual_seed(0))
    recon = vae.reconstruct(torch.zeros(2, 1, 16, 16), labels)
    for images in (samples, recon):
        assert images.shape == (2, 1, 16, 16)
        assert images.min() >= -1 and images.max() <= 1
