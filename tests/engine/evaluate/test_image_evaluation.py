"""Image evaluation: the digit classifier's recognition per class and the Frechet distance."""

from __future__ import annotations

import pytest
import torch

from engine.evaluate import EvalError, eval_config, evaluate_images

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def quick_evaluator(tmp_path_factory):
    from engine.vision.evaluate import Evaluator

    return Evaluator.load_or_train(tmp_path_factory.mktemp("clf") / "clf.pt", epochs=4)


def _gan_checkpoint(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vision"))
    from vision_helpers import tiny_config

    from engine.vision.train import train

    summary = train(tiny_config("gan", tmp_path / "run"))
    return summary.checkpoint


def test_recognition_per_digit_and_frechet_distance_of_a_tiny_gan(tmp_path, quick_evaluator):
    from engine.vision.evaluate import balanced_labels, sample_in_batches
    from engine.vision.train import load_recipe

    checkpoint = _gan_checkpoint(tmp_path)
    config = eval_config({"per_class": 6, "seed": 5, "device": "cpu"})
    result = evaluate_images(checkpoint, config, evaluator=quick_evaluator)
    metrics = result.metrics
    per_digit = [metrics[f"recognition_{d}"] for d in range(10)]
    assert metrics["recognition"] == pytest.approx(sum(per_digit) / 10)
    assert all(0.0 <= value <= 1.0 for value in per_digit)
    assert metrics["samples"] == 60.0 and metrics["frechet"] > 0
    # The same samples, scored by hand with the classifier.
    recipe, _ = load_recipe(checkpoint, device="cpu")
    labels = balanced_labels(6)
    images = sample_in_batches(recipe, labels, seed=5)
    expected = float((quick_evaluator.predict(images) == labels).float().mean())
    assert metrics["recognition"] == pytest.approx(expected)
    assert metrics["frechet"] == pytest.approx(quick_evaluator.frechet_distance(images), rel=1e-5)
    confusion = result.details["confusion"]
    assert [sum(row) for row in confusion] == [6] * 10
    assert result.details["model_kind"] == "gan"


def test_a_file_that_is_no_image_checkpoint_is_refused(tmp_path, quick_evaluator):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(EvalError, match="does not load"):
        evaluate_images(bogus, eval_config({"device": "cpu"}), evaluator=quick_evaluator)
