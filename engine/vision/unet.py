"""A small U-Net that predicts the noise in a noisy image, given the step and a class.

    net = UNet(UNetConfig(base_channels=32, channel_mults=[1, 2, 2]))
    eps = net(x_t, t, y)     # x_t (B, 1, H, W), t (B,) int, y (B,) int; y == num_classes: no class

The time step enters through a sinusoidal embedding and an MLP (Ho et al. 2020, after the
Transformer's positional code); the class through a learned embedding added to it. The
extra "null" class index ``num_classes`` is what classifier-free guidance trains with
condition dropout and asks for at sampling (Ho & Salimans 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.vision.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) steps -> (B, dim) sinusoids of geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; the step/class embedding scales and shifts the middle (FiLM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # Zero-init the last conv: each block starts as the identity, which trains faster.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head attention over the pixels of the lowest resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # (B, C, HW) each
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )  # (B, 1, HW, C)
        return x + self.out(attn[:, 0].transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, config: UNetConfig, in_channels: int = 1) -> None:
        super().__init__()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch
        self.null_class = config.num_classes
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(config.num_classes + 1, emb_dim)
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)

        widths = [ch * m for m in config.channel_mults]
        self.down = nn.ModuleList()
        skips = [ch]
        current = ch
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                self.down.append(ResBlock(current, width, emb_dim, config.dropout))
                current = width
                skips.append(current)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
                skips.append(current)

        self.mid1 = ResBlock(current, current, emb_dim, config.dropout)
        self.mid_attn = SelfAttention(current) if config.attention else nn.Identity()
        self.mid2 = ResBlock(current, current, emb_dim, config.dropout)

        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(ResBlock(current + skips.pop(), width, emb_dim, config.dropout))
                current = width
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(
            _norm(current), nn.SiLU(), nn.Conv2d(current, in_channels, 3, padding=1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels)) + self.class_emb(y)
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.head(h)  # (B, 1, H, W): predicted noise
