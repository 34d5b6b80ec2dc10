"""A class-conditional DCGAN: generator, projection discriminator, non-saturating loss, R1.

    g, d = Generator(cfg, image_size=8), Discriminator(cfg, image_size=8)
    fake = g(torch.randn(B, cfg.z_dim), labels)            # (B, 1, 8, 8) in [-1, 1]
    d_loss = discriminator_loss(d(real, labels), d(fake.detach(), labels))
    g_loss = generator_loss(d(fake, labels))

DCGAN (Radford et al. 2016) layout with nearest upsampling + 3x3 convolutions in place of
transposed ones (no checkerboard). The class enters the generator as an embedding
concatenated to the noise, and the discriminator as a projection (Miyato & Koyama 2018):
``D(x, y) = w . h(x) + embed(y) . h(x)``. Spectral norm on every discriminator layer keeps
it 1-Lipschitz per layer; the optional R1 penalty (Mescheder et al. 2018) pushes its
gradient on real images towards zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from engine.vision.config import GANConfig

START = 4  # the generator starts from a 4x4 map and doubles it


class Generator(nn.Module):
    def __init__(self, config: GANConfig, image_size: int) -> None:
        super().__init__()
        self.config = config
        ups = int(math.log2(image_size // START))
        ch = config.g_channels
        self.class_emb = nn.Embedding(config.num_classes, config.z_dim)
        self.project = nn.Linear(2 * config.z_dim, ch * START * START)
        layers: list[nn.Module] = [
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
        ]
        for _ in range(ups):
            out = max(ch // 2, 16)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            ch = out
        layers += [nn.Conv2d(ch, 1, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.class_emb(labels)], dim=1))  # (B, ch*16)
        return self.body(h.view(z.shape[0], -1, START, START))  # (B, 1, S, S)


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig, image_size: int) -> None:
        super().__init__()
        norm = spectral_norm if config.spectral_norm else (lambda module: module)
        downs = int(math.log2(image_size // START))
        ch = config.d_channels
        layers: list[nn.Module] = [norm(nn.Conv2d(1, ch, 3, padding=1)), nn.LeakyReLU(0.2)]
        for _ in range(downs):
            layers += [norm(nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [norm(nn.Conv2d(ch, 2 * ch, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.linear = norm(nn.Linear(2 * ch, 1))
        self.class_emb = norm(nn.Embedding(config.num_classes, 2 * ch))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.body(x).sum(dim=(2, 3))  # (B, C): global sum pooling
        return self.linear(h).squeeze(1) + (self.class_emb(labels) * h).sum(dim=1)  # (B,)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), written with softplus for stability."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: -log D(G(z)) keeps gradients alive when D wins early (Goodfellow 2014)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(
    discriminator: Discriminator, real: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over real images (multiply by gamma / 2)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real, labels)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
