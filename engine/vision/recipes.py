"""The three generators as recipes: networks + objective + optimizers + EMA, one step at a time.

    recipe = make_recipe(config, device)        # config: a Diffusion/GAN/VAE run config
    metrics = recipe.train_step(images, labels, step, generator)
    images = recipe.sample(labels, generator, steps=50, guidance_scale=2.0)

The training loop (engine.vision.train) knows only this interface: ``optimizers``,
``train_step``, ``sample``, ``state_dict`` / ``load_state_dict``. Each recipe samples from
its averaged (EMA) weights where it keeps them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from engine.vision.config import DiffusionRunConfig, GANRunConfig, RunConfig, VAERunConfig
from engine.vision.data import VisionInputError
from engine.vision.diffusion import GaussianDiffusion, check_guidance_scale
from engine.vision.ema import EMA
from engine.vision.gan import (
    Discriminator,
    Generator,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)
from engine.vision.unet import UNet
from engine.vision.vae import ConditionalVAE, kl_weight

SAMPLERS = ("ddim", "ddpm")


def _adam(params, config: RunConfig) -> torch.optim.Optimizer:
    train = config.train
    return torch.optim.AdamW(
        params, lr=train.lr, betas=(train.beta1, train.beta2), weight_decay=train.weight_decay
    )


def _clip(module: nn.Module, max_norm: float) -> float:
    if max_norm <= 0:
        return float("nan")
    return float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))


def _refuse_options(kind: str, options: dict[str, Any]) -> None:
    given = sorted(key for key, value in options.items() if value is not None)
    if given:
        raise VisionInputError(
            f"{', '.join(given)} only apply to diffusion models; this checkpoint is a {kind}"
        )


class DiffusionRecipe:
    kind = "diffusion"

    def __init__(self, config: DiffusionRunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.image_shape = (1, config.data.image_size, config.data.image_size)
        self.net = UNet(config.model).to(device)
        self.ema = EMA(self.net, config.train.ema_decay)
        self.diffusion = GaussianDiffusion(config.diffusion.timesteps, config.diffusion.schedule)
        self.optimizer = _adam(self.net.parameters(), config)
        self.optimizers = [self.optimizer]

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, float]:
        self.net.train()
        loss = self.diffusion.training_loss(
            self.net,
            images,
            labels,
            null_class=self.net.null_class,
            p_uncond=self.config.diffusion.p_uncond,
            generator=generator,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _clip(self.net, self.config.train.grad_clip)
        self.optimizer.step()
        self.ema.update(self.net)
        return {"train/loss": loss.item(), "train/grad_norm": grad_norm}

    def sample(
        self,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sampler = sampler or "ddim"
        if sampler not in SAMPLERS:
            raise VisionInputError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
        scale = check_guidance_scale(
            self.config.diffusion.guidance_scale if guidance_scale is None else guidance_scale
        )
        common = dict(
            image_shape=self.image_shape,
            null_class=self.net.null_class,
            guidance_scale=scale,
            generator=generator,
            x_T=x_T,
        )
        model = self.ema.model
        if sampler == "ddpm":
            if steps is not None and steps != self.diffusion.timesteps:
                raise VisionInputError(
                    f"the DDPM sampler runs all {self.diffusion.timesteps} steps; "
                    f"use the DDIM sampler for {steps}"
                )
            if eta not in (None, 1.0):
                raise VisionInputError("eta applies to the DDIM sampler only")
            return self.diffusion.ddpm_sample(model, labels, **common)
        return self.diffusion.ddim_sample(
            model,
            labels,
            steps=self.config.diffusion.sample_steps if steps is None else steps,
            eta=0.0 if eta is None else eta,
            **common,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        if not weights_only:
            self.optimizer.load_state_dict(state["optimizer"])


class GANRecipe:
    kind = "gan"

    def __init__(self, config: GANRunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        size = config.data.image_size
        self.generator = Generator(config.model, size).to(device)
        self.discriminator = Discriminator(config.model, size).to(device)
        self.ema = EMA(self.generator, config.train.ema_decay)
        self.opt_g = _adam(self.generator.parameters(), config)
        self.opt_d = _adam(self.discriminator.parameters(), config)
        self.optimizers = [self.opt_g, self.opt_d]

    def _noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(
            (batch, self.config.model.z_dim), generator=generator, device=self.device
        )

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, float]:
        model = self.config.model
        batch = images.shape[0]
        self.generator.train()
        self.discriminator.train()
        # Discriminator: real digits vs generated ones of the same classes.
        with torch.no_grad():
            fake = self.generator(self._noise(batch, generator), labels)
        real_logits = self.discriminator(images, labels)
        fake_logits = self.discriminator(fake, labels)
        d_loss = discriminator_loss(real_logits, fake_logits)
        r1 = torch.zeros((), device=self.device)
        if model.r1_gamma > 0 and step % model.r1_interval == 0:
            r1 = r1_penalty(self.discriminator, images, labels)
            d_loss = d_loss + model.r1_gamma / 2 * r1 * model.r1_interval
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        _clip(self.discriminator, self.config.train.grad_clip)
        self.opt_d.step()

        # Generator: fool the (just updated) discriminator; the D gradients are not kept.
        self.discriminator.requires_grad_(False)
        fake = self.generator(self._noise(batch, generator), labels)
        g_loss = generator_loss(self.discriminator(fake, labels))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        _clip(self.generator, self.config.train.grad_clip)
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        self.ema.update(self.generator)
        return {
            "train/d_loss": d_loss.item(),
            "train/g_loss": g_loss.item(),
            "train/d_real": torch.sigmoid(real_logits).mean().item(),
            "train/d_fake": torch.sigmoid(fake_logits).mean().item(),
            "train/r1": r1.item(),
        }

    @torch.no_grad()
    def sample(
        self, labels: torch.Tensor, generator: torch.Generator | None = None, **options: Any
    ) -> torch.Tensor:
        _refuse_options(self.kind, options)
        return self.ema.model(self._noise(labels.shape[0], generator), labels)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.load_state_dict(state["ema"])
        if not weights_only:
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])


class VAERecipe:
    kind = "vae"

    def __init__(self, config: VAERunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.vae = ConditionalVAE(config.model, config.data.image_size).to(device)
        self.optimizer = _adam(self.vae.parameters(), config)
        self.optimizers = [self.optimizer]

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, float]:
        self.vae.train()
        terms = self.vae.elbo_terms(images, labels, generator)
        weight = kl_weight(step, self.config.model.kl_warmup_steps)
        loss = terms.reconstruction + weight * terms.kl
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _clip(self.vae, self.config.train.grad_clip)
        self.optimizer.step()
        return {
            "train/loss": loss.item(),
            "train/reconstruction": terms.reconstruction.item(),
            "train/kl": terms.kl.item(),
            "train/elbo": terms.elbo.item(),
            "train/kl_weight": weight,
            "train/grad_norm": grad_norm,
        }

    @torch.no_grad()
    def sample(
        self, labels: torch.Tensor, generator: torch.Generator | None = None, **options: Any
    ) -> torch.Tensor:
        _refuse_options(self.kind, options)
        self.vae.eval()
        return self.vae.sample(labels, generator)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.vae.eval()
        return self.vae.reconstruct(images, labels)

    def state_dict(self) -> dict[str, Any]:
        return {"vae": self.vae.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        self.vae.load_state_dict(state["vae"])
        if not weights_only:
            self.optimizer.load_state_dict(state["optimizer"])


Recipe = DiffusionRecipe | GANRecipe | VAERecipe


def make_recipe(config: RunConfig, device: torch.device) -> Recipe:
    if isinstance(config, DiffusionRunConfig):
        return DiffusionRecipe(config, device)
    if isinstance(config, GANRunConfig):
        return GANRecipe(config, device)
    if isinstance(config, VAERunConfig):
        return VAERecipe(config, device)
    raise TypeError(f"not a vision run config: {type(config).__name__}")
