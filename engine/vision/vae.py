"""A convolutional, class-conditional VAE: encoder, reparameterisation, decoder, ELBO.

    vae = ConditionalVAE(VAEConfig(latent_dim=16), image_size=8)
    terms = vae.elbo_terms(x, labels)                # reconstruction, kl (per image, nats)
    loss = terms.reconstruction + kl_weight * terms.kl
    samples = vae.sample(labels)                     # decoder means, (B, 1, 8, 8) in [-1, 1]

Kingma & Welling 2014. Pixels are treated as Bernoulli probabilities in [0, 1] (the usual
choice for greyscale digits), so the reconstruction term is a summed binary cross-entropy.
The KL term of the Gaussian posterior against N(0, I) is closed-form (their appendix B).
Conditioning on the class (Sohn et al. 2015) is what lets the model draw "a handwritten 7".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.vision.config import VAEConfig

START = 4


@dataclass
class ELBOTerms:
    reconstruction: torch.Tensor  # -log p(x | z), summed over pixels, mean over the batch
    kl: torch.Tensor  # KL(q(z | x, y) || N(0, I)), summed over latents, mean over the batch
    logits: torch.Tensor  # (B, 1, S, S) decoder output for the sampled z

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.reconstruction + self.kl)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row: -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


class ConditionalVAE(nn.Module):
    def __init__(self, config: VAEConfig, image_size: int) -> None:
        super().__init__()
        self.config = config
        self.image_size = image_size
        downs = int(math.log2(image_size // START))
        ch = config.channels
        enc: list[nn.Module] = [nn.Conv2d(1 + config.num_classes, ch, 3, padding=1), nn.SiLU()]
        for _ in range(downs):
            enc += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), nn.SiLU()]
            ch *= 2
        enc += [nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Flatten()]
        self.encoder = nn.Sequential(*enc)
        self.to_stats = nn.Linear(ch * START * START, 2 * config.latent_dim)
        self.dec_ch = ch
        self.from_latent = nn.Linear(config.latent_dim + config.num_classes, ch * START * START)
        dec: list[nn.Module] = [nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU()]
        for _ in range(downs):
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch, ch // 2, 3, padding=1),
                nn.SiLU(),
            ]
            ch //= 2
        dec += [nn.Conv2d(ch, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.config.num_classes).float()

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-1]
        class_maps = self._one_hot(labels)[:, :, None, None].expand(-1, -1, size, size)
        stats = self.to_stats(self.encoder(torch.cat([x, class_maps], dim=1)))
        mu, logvar = stats.chunk(2, dim=1)  # (B, latent) each
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, self._one_hot(labels)], dim=1))
        return self.decoder(h.view(z.shape[0], self.dec_ch, START, START))  # logits

    @staticmethod
    def reparameterise(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + sigma * eps: the sample is a differentiable function of mu and sigma."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def elbo_terms(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> ELBOTerms:
        """x in [-1, 1]; one z sample per image (the usual single-sample estimate)."""
        mu, logvar = self.encode(x, labels)
        logits = self.decode(self.reparameterise(mu, logvar, generator), labels)
        target = (x + 1) / 2
        reconstruction = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return ELBOTerms(
            reconstruction=reconstruction.flatten(1).sum(1).mean(),
            kl=gaussian_kl(mu, logvar).mean(),
            logits=logits,
        )

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x, labels)
        return torch.sigmoid(self.decode(mu, labels)) * 2 - 1

    @torch.no_grad()
    def sample(
        self, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        z = torch.randn(
            (labels.shape[0], self.config.latent_dim), generator=generator, device=labels.device
        )
        return torch.sigmoid(self.decode(z, labels)) * 2 - 1


def kl_weight(step: int, warmup_steps: int) -> float:
    """KL warm-up (Bowman et al. 2016): 0 -> 1 linearly over ``warmup_steps``."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)
