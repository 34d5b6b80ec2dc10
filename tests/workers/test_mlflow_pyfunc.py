"""The registry's MLflow pyfunc models, saved and loaded locally: the engine behind predict."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch

from engine.infer.generate import Generator, SamplingParams
from engine.infer.loading import load_for_generation
from tests.enginemodels import text_export, vision_checkpoint
from workers.mlflow_pyfunc import IMAGE_GENERATION, TEXT_GENERATION, save_version_model

GREEDY = {"max_tokens": 12, "temperature": 0.0}


def _engine_text(folder, prompts: list[str]) -> list[str]:
    model, tokenizer = load_for_generation(folder)
    result = Generator(model, tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=12, temperature=0.0)
    )
    return [g.text for g in result.generations]


@pytest.mark.parametrize("llama", [False, True], ids=["gpt2-layout", "engine-layout"])
def test_a_text_version_generates_what_the_engine_generates(tmp_path, llama):
    folder = text_export(tmp_path / "files", llama=llama)
    path = save_version_model(folder, task=TEXT_GENERATION, path=tmp_path / "pyfunc")
    model = mlflow.pyfunc.load_model(str(path))
    prompts = ["To be", "Whether"]
    expected = _engine_text(folder, prompts)
    assert model.predict(prompts, params=GREEDY) == expected
    # A DataFrame of prompts and a single string work as well.
    assert model.predict(pd.DataFrame({"prompt": prompts}), params=GREEDY) == expected
    assert model.predict("To be", params=GREEDY) == expected[:1]
    sampled = model.predict(["To be"], params={"max_tokens": 5, "temperature": 1.0, "seed": 3})
    assert len(sampled) == 1 and isinstance(sampled[0], str)
    # The engine's source travels with the model: a user's Python needs no checkout.
    assert (path / "code" / "engine" / "infer" / "generate.py").is_file()
    assert (path / "code" / "workers" / "mlflow_pyfunc.py").is_file()


def test_an_image_version_draws_the_digits_asked_for(tmp_path):
    from engine.vision.evaluate import sample_in_batches
    from engine.vision.train import load_recipe

    checkpoint = vision_checkpoint(tmp_path / "gan")
    files = tmp_path / "files"
    files.mkdir()
    (files / checkpoint.name).write_bytes(checkpoint.read_bytes())
    path = save_version_model(files, task=IMAGE_GENERATION, path=tmp_path / "pyfunc")
    model = mlflow.pyfunc.load_model(str(path))
    images = model.predict([3, 7], params={"seed": 5})
    assert len(images) == 2
    grid = torch.tensor(images)
    assert grid.shape == (2, 8, 8) and grid.min() >= 0 and grid.max() <= 1
    recipe, _ = load_recipe(checkpoint, device="cpu")
    with torch.no_grad():
        expected = sample_in_batches(recipe, torch.tensor([3, 7]), seed=5)[:, 0]
    torch.testing.assert_close(grid, ((expected.clamp(-1, 1) + 1) / 2), atol=1e-4, rtol=0)
    assert model.predict(pd.DataFrame({"digit": [3, 7]}), params={"seed": 5}) == images


def test_an_image_version_refuses_a_digit_it_was_not_trained_on(tmp_path):
    checkpoint = vision_checkpoint(tmp_path / "gan")
    path = save_version_model(checkpoint.parent, task=IMAGE_GENERATION, path=tmp_path / "pyfunc")
    model = mlflow.pyfunc.load_model(str(path))
    with pytest.raises(Exception, match="outside the trained classes"):
        model.predict([12])
