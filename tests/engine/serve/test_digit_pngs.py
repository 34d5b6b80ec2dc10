"""Digit images from vision checkpoints, as PNG bytes."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vision"))
import torch  # noqa: E402
from vision_helpers import tiny_config  # noqa: E402

from engine.serve import ServeError  # noqa: E402
from engine.serve.images import DigitImageModel, generate_digits  # noqa: E402
from engine.vision.checkpoint import VisionCheckpoints  # noqa: E402
from engine.vision.config import config_to_dict  # noqa: E402
from engine.vision.recipes import make_recipe  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of freshly initialised tiny generators, in the training loop's format:
    what is served from them is the plumbing (sampling, PNGs, seeds), not image quality,
    and training would load the digits data (and scikit-learn) for nothing."""
    root = tmp_path_factory.mktemp("vision")
    runs = {}
    for kind in ("gan", "diffusion"):
        torch.manual_seed(0)
        config = tiny_config(kind, root / kind)
        recipe = make_recipe(config, torch.device("cpu"))
        payload = {"kind": kind, "config": config_to_dict(config), "state": recipe.state_dict()}
        VisionCheckpoints(root / kind).save(1, payload)
        runs[kind] = root / kind
    return runs


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_n_pngs_of_each_digit_repeatable_by_seed(checkpoints):
    model = DigitImageModel.load(checkpoints["gan"], device="cpu")
    pngs = model.generate([7, 3], n=2, seed=1)
    assert len(pngs) == 4
    assert all(png_size(p) == (64, 64) for p in pngs)  # 8x8 digits scaled up 8x
    assert generate_digits(checkpoints["gan"], [7, 3], n=2, seed=1) == pngs
    assert model.generate([7, 3], n=2, seed=2) != pngs
    assert model.digit("a handwritten seven") == 7


def test_diffusion_takes_guidance_and_steps(checkpoints):
    model = DigitImageModel.load(checkpoints["diffusion"], device="cpu")
    pngs = model.generate([0], n=2, guidance=2.0, steps=3, seed=0)
    assert len(pngs) == 2 and png_size(pngs[0]) == (64, 64)
    with pytest.raises(ServeError, match="sampling steps must be an integer"):
        model.generate([0], steps=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.generate([11]), "digits:"),
        (lambda m: m.generate([]), "at least one digit"),
        (lambda m: m.generate([1], n=0), "n must be a positive integer"),
        (lambda m: m.generate([1], n=65), "at most 64 images"),
        (lambda m: m.generate([1], guidance=3.0), "guidance only apply to diffusion models"),
        (lambda m: m.digit("a cat"), "names no digit"),
    ],
)
def test_bad_image_requests_are_named(checkpoints, call, message):
    model = DigitImageModel.load(checkpoints["gan"], device="cpu")
    with pytest.raises(ServeError, match=message):
        call(model)


def test_a_missing_checkpoint_is_a_serve_error(tmp_path):
    with pytest.raises(ServeError, match="checkpoint:"):
        DigitImageModel.load(tmp_path / "nothing")
