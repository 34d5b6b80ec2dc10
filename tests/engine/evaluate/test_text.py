"""Text evaluation: held-out loss, samples scored with the data pipeline's scorers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_helpers import TEXT_FIGURES, write_shards

from engine.evaluate import EvalConfig, EvalError, eval_config, evaluate_text
from engine.evaluate.text import held_out_loss, load_model, score_samples


def _config(**changes) -> EvalConfig:
    base = {"samples": 4, "sample_tokens": 60, "eval_batches": 2, "batch_size": 2}
    return eval_config({**base, "device": "cpu", **changes})


def test_the_held_out_loss_is_the_mean_cross_entropy_of_the_first_val_windows(tiny_text):
    model, tokenizer = load_model(tiny_text.model_dir, torch.device("cpu"))
    val = held_out_loss(model, tiny_text.shards, _config(batch_size=1, eval_batches=2), tokenizer)
    stream = np.fromfile(tiny_text.shards / "val_00000.bin", dtype="<u2").astype(np.int64)
    losses = []
    for start in (0, 32):
        window = torch.from_numpy(stream[start : start + 33])[None]
        with torch.no_grad():
            _, loss = model(window[:, :-1], window[:, 1:])
        losses.append(float(loss))
    assert val["val_loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert val["perplexity"] == pytest.approx(math.exp(val["val_loss"]))
    assert val["val_tokens"] == 64 and val["val_batches"] == 2


def test_the_batches_never_wrap_around_a_short_val_split(tiny_text):
    model, tokenizer = load_model(tiny_text.model_dir, torch.device("cpu"))
    val = held_out_loss(model, tiny_text.shards, _config(batch_size=4, eval_batches=100), tokenizer)
    windows = (tiny_text_val_tokens(tiny_text) - 1) // 32
    assert val["val_tokens"] == (windows // 4) * 4 * 32


def tiny_text_val_tokens(tiny_text) -> int:
    return len(np.fromfile(tiny_text.shards / "val_00000.bin", dtype="<u2"))


def test_samples_are_scored_with_the_pipelines_toxicity_pii_and_repetition_checks():
    samples = [
        {"text": "You arsehole, you asshole, you utter arse of a man."},
        {"text": "Write to jane.doe@example.com or ring +44 20 7946 0958 today."},
        {"text": "the same line again\n" * 12},
        {"text": "A fair day in Verona, and the market full of oranges and bread."},
    ]
    metrics = score_samples(samples, _config())
    assert metrics["toxicity_share"] == 0.25 and samples[0]["toxic"]
    assert metrics["pii_share"] == 0.25
    assert samples[1]["pii"] == {"EMAIL": 1, "PHONE": 1}
    assert metrics["pii_email"] == 1.0 and metrics["pii_phone"] == 1.0 and metrics["pii_iban"] == 0
    assert metrics["pii_found"] == 2.0
    assert metrics["repetition"] == 0.25 and samples[2]["repetition"] == "dup_line_fraction"
    assert samples[3] == {**samples[3], "toxic": False, "pii": {}, "repetition": None}


def test_a_text_evaluation_reports_every_figure_and_its_phases(tiny_text):
    phases = []
    result = evaluate_text(
        tiny_text.model_dir,
        tiny_text.shards,
        tiny_text.shards,
        _config(prompts=["ROMEO:", "To be"]),
        on_phase=lambda name, fraction: phases.append((name, fraction)),
    )
    metrics = result.metrics
    for key in (*TEXT_FIGURES, "samples"):
        assert isinstance(metrics[key], float), key
    assert metrics["samples"] == 4.0
    assert [s["prompt"] for s in result.details["samples"]] == ["ROMEO:", "To be"] * 2
    assert result.details["memorisation"]["checked"] is True
    assert [name for name, _ in phases] == list(result.details["seconds"])
    fractions = [fraction for _, fraction in phases]
    assert fractions == sorted(fractions) and fractions[-1] < 1
    # Same seed, same samples.
    again = evaluate_text(
        tiny_text.model_dir, tiny_text.shards, None, _config(prompts=["ROMEO:", "To be"])
    )
    assert [s["text"] for s in again.details["samples"]] == [
        s["text"] for s in result.details["samples"]
    ]
    assert "memorisation_share" not in again.metrics
    assert "not checked" in again.details["memorisation"]["note"]


def test_shards_of_another_tokenizer_are_refused(tiny_text, tmp_path):
    from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer

    other = CharTokenizer.train(
        "zyxwvutsrqponmlkjihgfedcba ,.", special_tokens=DEFAULT_SPECIAL_TOKENS
    )
    shards = write_shards(tmp_path / "other", other, ["abc " * 40], ["cba " * 40])
    with pytest.raises(EvalError, match="another tokenizer"):
        evaluate_text(tiny_text.model_dir, shards, None, _config())


def test_a_val_split_shorter_than_the_context_says_what_to_do(tiny_text, tmp_path):
    shards = write_shards(tmp_path / "short", tiny_text.tokenizer, ["plenty " * 20], ["short"])
    with pytest.raises(EvalError, match="larger val_fraction"):
        evaluate_text(tiny_text.model_dir, shards, None, _config())


def test_a_prompt_the_tokenizer_cannot_encode_is_named(tiny_text):
    with pytest.raises(EvalError, match="prompt 'Grüß'"):
        evaluate_text(tiny_text.model_dir, tiny_text.shards, None, _config(prompts=["Grüß"]))


def test_a_missing_gpu_is_named(tiny_text, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EvalError, match="device is 'cuda' but there is no CUDA device"):
        evaluate_text(tiny_text.model_dir, tiny_text.shards, None, _config(device="cuda"))


def test_settings_out_of_range_are_refused_naming_the_key():
    with pytest.raises(EvalError, match="samples must be at most 1024"):
        eval_config({"samples": 1025})
    with pytest.raises(EvalError, match="unknown key 'sampels'"):
        eval_config({"sampels": 3})
