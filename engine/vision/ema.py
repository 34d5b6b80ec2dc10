"""Exponential moving average of a model's weights, used for sampling.

    ema = EMA(model, decay=0.999)
    ... optimizer.step(); ema.update(model)
    ema.model(x)          # the averaged copy, in eval mode

Averaged weights give visibly cleaner samples from diffusion models and GAN generators
(Karras et al. 2018, Song & Ermon 2020). The decay ramps up as ``(1 + n) / (10 + n)``
so the first updates are not tied to the random initialisation.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - decay)
        # Buffers (BatchNorm statistics, spectral-norm vectors): averaged when they are
        # float, copied otherwise (counters).
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            if ema_b.dtype.is_floating_point:
                ema_b.lerp_(b, 1 - decay)
            else:
                ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
