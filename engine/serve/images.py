"""Digit images from the vision checkpoints (diffusion, GAN, VAE), as PNG bytes.

    model = DigitImageModel.load("var/runs/digits-diffusion")    # once per serve worker
    pngs = model.generate([7, 3], n=2, guidance=3.0, steps=20, seed=1)  # 7, 7, 3, 3
    pngs = generate_digits("var/runs/digits-gan", [5], n=4, seed=0)    # load and sample

Sampling is the vision engine's own (``Recipe.sample`` through ``sample_in_batches``: the
EMA weights, DDIM/DDPM with classifier-free guidance); this module only maps a request
onto it and encodes each image as an 8-bit greyscale PNG. The same seed gives the same
images. ``guidance`` and ``steps`` apply to diffusion checkpoints only; a GAN or VAE
refuses them by name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from engine.serve.params import ServeError
from engine.vision.data import VisionInputError, check_class, parse_prompt
from engine.vision.evaluate import sample_in_batches
from engine.vision.images import encode_png, make_grid

MAX_IMAGES = 64  # per call
MIN_PIXELS = 64  # small native sizes (8x8 digits) are scaled up to at least this


class DigitImageModel:
    """A loaded vision checkpoint, ready to sample (load once, generate many times)."""

    def __init__(self, recipe, payload: dict):
        self.recipe = recipe
        self.kind: str = payload["kind"]
        self.step: int = payload.get("step", 0)
        self.num_classes: int = payload["config"]["model"]["num_classes"]
        self.image_size: int = payload["config"]["data"]["image_size"]

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, device: str = "auto") -> DigitImageModel:
        from engine.vision.train import load_recipe  # the training module is heavy

        try:
            recipe, payload = load_recipe(checkpoint, device=device)
        except (VisionInputError, OSError) as error:
            raise ServeError(f"checkpoint: {error}") from None
        return cls(recipe, payload)

    def digit(self, prompt: str) -> int:
        """The digit a prompt names ("a handwritten 7", "seven"); ServeError otherwise."""
        try:
            return parse_prompt(prompt, self.num_classes)
        except VisionInputError as error:
            raise ServeError(f"prompt: {error}") from None

    def generate(
        self,
        digits: Sequence[int],
        n: int = 1,
        guidance: float | None = None,
        steps: int | None = None,
        seed: int = 0,
        scale: int | None = None,
    ) -> list[bytes]:
        """``n`` PNG images of each digit, digit by digit."""
        digits = list(digits)
        if not digits:
            raise ServeError("digits: at least one digit is required")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ServeError(f"n must be a positive integer, got {n!r}")
        if len(digits) * n > MAX_IMAGES:
            raise ServeError(f"at most {MAX_IMAGES} images per call, asked for {len(digits) * n}")
        try:
            labels = torch.tensor([check_class(int(d), self.num_classes) for d in digits])
        except (VisionInputError, TypeError, ValueError) as error:
            raise ServeError(f"digits: {error}") from None
        labels = labels.repeat_interleave(n)
        options = {}
        if self.kind == "diffusion":
            options = {"steps": steps, "guidance_scale": guidance}
        elif guidance is not None or steps is not None:
            named = [k for k, v in (("guidance", guidance), ("steps", steps)) if v is not None]
            raise ServeError(
                f"{', '.join(named)} only apply to diffusion models; this checkpoint is a "
                f"{self.kind}"
            )
        try:
            images = sample_in_batches(self.recipe, labels, seed=seed, **options)
        except VisionInputError as error:
            raise ServeError(str(error)) from None
        size = images.shape[-1]
        scale = scale or max(1, math.ceil(MIN_PIXELS / size))
        return [
            encode_png(make_grid(image[None], nrow=1, padding=0, scale=scale)) for image in images
        ]


def generate_digits(
    checkpoint: str | os.PathLike | DigitImageModel,
    digits: Sequence[int],
    n: int = 1,
    guidance: float | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> list[bytes]:
    """PNG bytes of ``n`` images of each digit from a vision checkpoint (path or loaded)."""
    model = (
        checkpoint if isinstance(checkpoint, DigitImageModel) else DigitImageModel.load(checkpoint)
    )
    return model.generate(digits, n=n, guidance=guidance, steps=steps, seed=seed)
