"""YAML configs: every key is checked and a mistake names the key."""

from __future__ import annotations

import pytest

from engine.train.config import ConfigError, load_config


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_the_shipped_recipe_loads():
    config = load_config("configs/shakespeare_char.yaml")
    assert (config.model.n_layer, config.model.n_head, config.model.n_embd) == (4, 4, 128)
    assert (config.model.block_size, config.train.batch_size) == (64, 12)
    assert (config.optim.lr, config.optim.min_lr, config.optim.beta2) == (1e-3, 1e-4, 0.99)
    assert config.vocab_from_data


def test_a_misspelt_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(_write(tmp_path, "optim:\n  lrr: 0.001\n"))


def test_an_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(_write(tmp_path, "trainer:\n  max_iters: 3\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  max_iters: ten\n", "train.max_iters must be an integer"),
        ("train:\n  batch_size: 0\n", "train.batch_size must be at least 1"),
        ("train:\n  device: tpu\n", "train.device must be one of"),
        ("model:\n  n_embd: 100\n  n_head: 3\n", "model.n_embd .* divisible by model.n_head"),
        ("optim:\n  beta2: 1.5\n", r"optim.beta2 must be in \[0, 1\)"),
        ("optim:\n  lr: 1e-4\n  min_lr: 1e-3\n", "optim.min_lr .* is above optim.lr"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_overrides_go_through_the_same_checks(tmp_path):
    path = _write(tmp_path, "train:\n  max_iters: 10\n")
    assert load_config(path, ["train.max_iters=3", "optim.lr=1e-4"]).train.max_iters == 3
    with pytest.raises(ConfigError, match="unknown key 'train.max_iter'"):
        load_config(path, ["train.max_iter=3"])
