"""Gaussian diffusion: the DDPM forward process, its loss, and the DDPM and DDIM samplers.

    diffusion = GaussianDiffusion(timesteps=1000, schedule="cosine")
    loss = diffusion.training_loss(unet, x0, labels, p_uncond=0.1)          # epsilon MSE
    x = diffusion.ddpm_sample(unet, labels, guidance_scale=2.0)              # 1000 steps
    x = diffusion.ddim_sample(unet, labels, steps=50, guidance_scale=2.0)    # eta=0: deterministic

Notation follows Ho et al. 2020 (DDPM): ``beta_t`` the noise added at step t,
``alpha_bar_t = prod(1 - beta_s)``, and the closed form of the forward process
``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`` (their eq. 4).
DDIM (Song et al. 2021, eq. 12) reuses the same trained network on a sub-sequence of steps.
Classifier-free guidance (Ho & Salimans 2022) mixes the conditional and unconditional
predictions: ``eps = eps_uncond + s * (eps_cond - eps_uncond)``; s=1 is the plain
conditional model, s=0 the unconditional one. Time steps are 0-based: t=0 is the first
noising step, t=T-1 the last.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.vision.data import VisionInputError

MAX_GUIDANCE = 20.0
# The network's call signature: noisy images, steps, classes -> predicted noise.
EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def linear_betas(timesteps: int) -> torch.Tensor:
    """DDPM's 1e-4 .. 0.02 over 1000 steps, rescaled so other T keep the same total noise."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar follows cos^2; betas clipped at 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def classifier_free_guidance(
    eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float
) -> torch.Tensor:
    return eps_uncond + scale * (eps_cond - eps_uncond)


def check_guidance_scale(scale: float) -> float:
    if not isinstance(scale, int | float) or not 0.0 <= scale <= MAX_GUIDANCE:
        raise VisionInputError(f"guidance scale must be in [0, {MAX_GUIDANCE:g}], got {scale}")
    return float(scale)


def _extract(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, 1) to broadcast over images."""
    return values.to(t.device)[t].float()[:, None, None, None]


class GaussianDiffusion:
    def __init__(self, timesteps: int = 1000, schedule: str = "cosine") -> None:
        if schedule == "linear":
            betas = linear_betas(timesteps)
        elif schedule == "cosine":
            betas = cosine_betas(timesteps)
        else:
            raise VisionInputError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
        self.timesteps = timesteps
        self.schedule = schedule
        # Kept in float64: alpha_bar reaches ~1e-5 and its square roots lose bits in fp32.
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7).
        self.posterior_variance = betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)
        self.posterior_mean_coef_x0 = betas * self.alpha_bar_prev.sqrt() / (1 - self.alpha_bar)
        self.posterior_mean_coef_xt = (
            (1 - self.alpha_bar_prev) * self.alphas.sqrt() / (1 - self.alpha_bar)
        )

    # -- forward process ---------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t in one step from x_0 (eq. 4), instead of t successive noisings."""
        return (
            _extract(self.alpha_bar.sqrt(), t) * x0
            + _extract((1 - self.alpha_bar).sqrt(), t) * noise
        )

    def q_step(self, x_prev: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """One noising step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
        beta = float(self.betas[t])
        return math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * noise

    def training_loss(
        self,
        model: EpsModel,
        x0: torch.Tensor,
        labels: torch.Tensor,
        null_class: int,
        p_uncond: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Epsilon-prediction MSE (DDPM's "simple" loss) with condition dropout for CFG."""
        batch = x0.shape[0]
        t = torch.randint(0, self.timesteps, (batch,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        drop = torch.rand(batch, generator=generator, device=x0.device) < p_uncond
        labels = torch.where(drop, torch.full_like(labels, null_class), labels)
        return F.mse_loss(model(self.q_sample(x0, t, noise), t, labels), noise)

    # -- sampling ----------------------------------------------------------------------

    def guided_eps(
        self,
        model: EpsModel,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        null_class: int,
        guidance_scale: float,
    ) -> torch.Tensor:
        if guidance_scale == 1.0:  # the conditional model alone: skip the second pass
            return model(x, t, labels)
        null = torch.full_like(labels, null_class)
        eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        eps_cond, eps_uncond = eps.chunk(2)
        return classifier_free_guidance(eps_cond, eps_uncond, guidance_scale)

    def _x0_from_eps(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (x - _extract((1 - self.alpha_bar).sqrt(), t) * eps) / _extract(
            self.alpha_bar.sqrt(), t
        )

    def _start(
        self, shape: tuple[int, ...], x_T: torch.Tensor | None, generator, device
    ) -> torch.Tensor:
        if x_T is not None:
            if tuple(x_T.shape) != tuple(shape):
                raise VisionInputError(
                    f"x_T must have shape {tuple(shape)}, got {tuple(x_T.shape)}"
                )
            return x_T.to(device)
        return torch.randn(shape, generator=generator, device=device)

    @torch.no_grad()
    def ddpm_sample(
        self,
        model: EpsModel,
        labels: torch.Tensor,
        image_shape: tuple[int, int, int],
        null_class: int,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling through all T steps (DDPM Algorithm 2, posterior variance)."""
        guidance_scale = check_guidance_scale(guidance_scale)
        x = self._start((labels.shape[0], *image_shape), x_T, generator, labels.device)
        for step in reversed(range(self.timesteps)):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            eps = self.guided_eps(model, x, t, labels, null_class, guidance_scale)
            x0 = self._x0_from_eps(x, t, eps).clamp(-1, 1)
            mean = (
                _extract(self.posterior_mean_coef_x0, t) * x0
                + _extract(self.posterior_mean_coef_xt, t) * x
            )
            if step > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device)
                x = mean + _extract(self.posterior_variance.sqrt(), t) * noise
            else:
                x = mean
        return x.clamp(-1, 1)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` evenly spaced steps from T-1 down to 0."""
        if (
            isinstance(steps, bool)
            or not isinstance(steps, int)
            or not 1 <= steps <= self.timesteps
        ):
            raise VisionInputError(
                f"sampling steps must be an integer in [1, {self.timesteps}], got {steps}"
            )
        if steps == 1:
            return [self.timesteps - 1]
        grid = torch.linspace(self.timesteps - 1, 0, steps).round().long().tolist()
        return list(dict.fromkeys(grid))  # rounding may repeat a step when steps ~ T

    @torch.no_grad()
    def ddim_sample(
        self,
        model: EpsModel,
        labels: torch.Tensor,
        image_shape: tuple[int, int, int],
        null_class: int,
        steps: int = 50,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM (eq. 12). eta=0: a deterministic map from x_T; eta=1: DDPM-like noise."""
        guidance_scale = check_guidance_scale(guidance_scale)
        if not 0.0 <= eta <= 1.0:
            raise VisionInputError(f"eta must be in [0, 1], got {eta}")
        schedule = self.ddim_timesteps(steps)
        x = self._start((labels.shape[0], *image_shape), x_T, generator, labels.device)
        for index, step in enumerate(schedule):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            eps = self.guided_eps(model, x, t, labels, null_class, guidance_scale)
            x0 = self._x0_from_eps(x, t, eps).clamp(-1, 1)
            a_t = float(self.alpha_bar[step])
            a_prev = (
                float(self.alpha_bar[schedule[index + 1]]) if index + 1 < len(schedule) else 1.0
            )
            # The noise direction that the clipped x0 implies keeps x0 and eps consistent.
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
        return x.clamp(-1, 1)
