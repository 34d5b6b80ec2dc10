"""Configs name the bad key; the digits split, prompts and image checks."""

from __future__ import annotations

import pytest
import torch

from engine.vision.config import ConfigError, load_config
from engine.vision.data import (
    VisionInputError,
    check_images,
    load_digits_split,
    parse_prompt,
)


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    for kind in ("diffusion", "gan", "vae"):
        config = load_config(kind, f"configs/vision/{kind}.yaml")
        assert config.data.image_size == 8


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  stesp: 10\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.stesp' \(did you mean 'train.steps'\?\)"
    ):
        load_config("vae", path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  steps: ten\n", "train.steps must be an integer"),
        ("train:\n  steps: 0\n", "train.steps must be at least 1"),
        ("diffusion:\n  schedule: quadratic\n", "diffusion.schedule must be one of"),
        ("diffusion:\n  guidance_scale: 50\n", "diffusion.guidance_scale"),
        ("model:\n  channel_mults: [1, 2, 2, 2]\n", "cannot be halved 3 times"),
        ("data:\n  image_size: 12\n", "data.image_size must be one of"),
        ("model: [1, 2]\n", "model must be a mapping"),
    ],
)
def test_bad_values_name_their_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config("diffusion", write(tmp_path, text))


def test_overrides_are_checked_like_the_file():
    config = load_config("gan", None, ["train.steps=7", "model.r1_gamma=0.5"])
    assert config.train.steps == 7 and config.model.r1_gamma == 0.5
    with pytest.raises(ConfigError, match="unknown key 'model.r1'"):
        load_config("gan", None, ["model.r1=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("gan", "missing.yaml")


def test_split_is_stratified_disjoint_and_scaled():
    split = load_digits_split(8)
    assert split.train_images.shape[0] + split.heldout_images.shape[0] == 1797
    assert split.heldout_images.shape[1:] == (1, 8, 8)
    assert split.train_images.min() == -1.0 and split.train_images.max() == 1.0
    assert torch.bincount(split.heldout_labels).min() >= 30  # every digit is held out
    train_rows = {tuple(row) for row in split.train_images.flatten(1).tolist()}
    overlap = sum(tuple(row) in train_rows for row in split.heldout_images.flatten(1).tolist())
    assert overlap < 5  # only the rare exact duplicates inside the data set itself
    assert load_digits_split(16).train_images.shape[1:] == (1, 16, 16)


@pytest.mark.parametrize(
    "prompt, digit",
    [("a handwritten 7", 7), ("7", 7), ("Draw a SEVEN", 7), ("digit 0", 0), ("nine", 9)],
)
def test_prompts_select_the_digit(prompt, digit):
    assert parse_prompt(prompt) == digit


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("a handwritten cat", "names no digit"),
        ("a 3 or a 4", "several digits"),
        ("a handwritten 12", "outside the trained classes 0..9"),
    ],
)
def test_bad_prompts_are_refused(prompt, message):
    with pytest.raises(VisionInputError, match=message):
        parse_prompt(prompt)


def test_class_outside_a_smaller_trained_set_is_refused():
    with pytest.raises(VisionInputError, match="outside the trained classes 0..4"):
        parse_prompt("a handwritten 7", num_classes=5)


@pytest.mark.parametrize(
    "shape, message",
    [((2, 3, 8, 8), "1 channel"), ((2, 1, 16, 16), "must be 8x8"), ((1, 8, 8), "shape")],
)
def test_check_images_names_the_problem(shape, message):
    with pytest.raises(VisionInputError, match=message):
        check_images(torch.zeros(shape), 8)
