"""The scikit-learn 8x8 digits as tensors, a fixed train / held-out split, and prompts.

    from engine.vision.data import load_digits_split, parse_prompt
    split = load_digits_split(image_size=16)       # images in [-1, 1], shape (N, 1, 16, 16)
    split.train_images, split.train_labels, split.heldout_images ...
    parse_prompt("a handwritten 7")                # -> 7

The held-out digits are never trained on by any model nor by the evaluation classifier:
they are what the Frechet distance compares samples with. The split is stratified and
fixed by ``split_seed``, so every model and the evaluator agree on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
NATIVE_SIZE = 8  # scikit-learn's digits are 8x8, 17 grey levels (0..16)
ALLOWED_SIZES = (8, 16, 32)
_NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}


class VisionInputError(ValueError):
    """Input the user must fix: a prompt, a class, an image shape, a scale or step count."""


@dataclass
class DigitsSplit:
    train_images: torch.Tensor  # (N_train, 1, S, S) in [-1, 1]
    train_labels: torch.Tensor  # (N_train,) int64
    heldout_images: torch.Tensor  # (N_heldout, 1, S, S) in [-1, 1]
    heldout_labels: torch.Tensor  # (N_heldout,)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])


@lru_cache(maxsize=4)
def _digits_native(heldout_fraction: float, split_seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    return tuple(
        train_test_split(
            images,
            labels,
            test_size=heldout_fraction,
            stratify=labels,
            random_state=split_seed,
        )
    )


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, s, s) -> (B, 1, size, size): bilinear up, area down (keeps stroke mass)."""
    current = images.shape[-1]
    if current == size:
        return images
    if size > current:
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(images, (size, size))


def load_digits_split(
    image_size: int = NATIVE_SIZE, heldout_fraction: float = 0.2, split_seed: int = 0
) -> DigitsSplit:
    """The 1797 real digits, split stratified; pixels mapped from [0, 16] to [-1, 1]."""
    if image_size not in ALLOWED_SIZES:
        raise VisionInputError(f"image_size must be one of {list(ALLOWED_SIZES)}, got {image_size}")
    if not 0.05 <= heldout_fraction <= 0.5:
        raise VisionInputError(f"heldout_fraction must be in [0.05, 0.5], got {heldout_fraction}")
    train_x, heldout_x, train_y, heldout_y = _digits_native(heldout_fraction, split_seed)

    def to_tensor(array: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(array).unsqueeze(1) * 2.0 - 1.0  # (N, 1, 8, 8)
        return resize(images, image_size).clamp(-1.0, 1.0).contiguous()

    return DigitsSplit(
        train_images=to_tensor(train_x),
        train_labels=torch.from_numpy(train_y),
        heldout_images=to_tensor(heldout_x),
        heldout_labels=torch.from_numpy(heldout_y),
    )


def parse_prompt(prompt: str, num_classes: int = NUM_CLASSES) -> int:
    """The digit a prompt asks for: "a handwritten 7", "seven", "digit 3" -> 7, 7, 3."""
    text = prompt.strip().lower()
    numbers = [int(match) for match in re.findall(r"\d+", text)]
    numbers += [
        _NUMBER_WORDS[word] for word in re.findall(r"[a-z]+", text) if word in _NUMBER_WORDS
    ]
    if not numbers:
        raise VisionInputError(f"prompt {prompt!r} names no digit; say e.g. 'a handwritten 7'")
    if len(set(numbers)) > 1:
        raise VisionInputError(
            f"prompt {prompt!r} names several digits ({sorted(set(numbers))}); ask for one"
        )
    return check_class(numbers[0], num_classes)


def check_class(label: int, num_classes: int = NUM_CLASSES) -> int:
    if not 0 <= label < num_classes:
        raise VisionInputError(f"class {label} is outside the trained classes 0..{num_classes - 1}")
    return label


def check_images(images: torch.Tensor, image_size: int, channels: int = 1) -> torch.Tensor:
    """Refuse a batch of the wrong rank, channel count or size, naming what was expected."""
    if not isinstance(images, torch.Tensor):
        raise VisionInputError(f"images must be a tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise VisionInputError(
            f"images must have shape (batch, {channels}, {image_size}, {image_size}), "
            f"got {tuple(images.shape)}"
        )
    if images.shape[1] != channels:
        raise VisionInputError(
            f"images must have {channels} channel(s), got {images.shape[1]} "
            f"(shape {tuple(images.shape)})"
        )
    if tuple(images.shape[2:]) != (image_size, image_size):
        raise VisionInputError(
            f"images must be {image_size}x{image_size}, got {images.shape[2]}x{images.shape[3]}"
        )
    return images
