"""MLflow pyfunc models of registry versions: the version's files, the engine behind `predict`.

What a user's own mlflow client gets from the registry mirror
(controlplane/registry/mlflow_sync.py):

    import mlflow
    text = mlflow.pyfunc.load_model("models:/shakespeare@production")
    text.predict(["ROMEO:", "JULIET:"], params={"max_tokens": 40, "temperature": 0.8})
    # -> ["...", "..."]: one completion per prompt (a DataFrame with a `prompt` column works too)
    digits = mlflow.pyfunc.load_model("models:/digits@production")
    digits.predict([3, 7])  # -> two 8x8 images (8 rows of 8 grey levels in [0, 1])

Text versions (an exported GPT: config.json, safetensors, tokenizer.json) load with
engine.infer.loading and generate with the KV cache (engine.infer.generate); image versions
(a vision checkpoint, `*.pt`) load with engine.vision.train.load_recipe and sample one
image per digit asked for. Params: text `max_tokens`, `temperature` (0 = greedy), `top_k`
(0 = off), `seed` (-1 = random); images `seed`, `steps` (diffusion only; 0 = its own).

`save_version_model(folder, task=..., path=...)` writes such an MLflow model: the files
under `artifacts/model`, and the engine's source (plus this module) under `code/`, so a
Python with mlflow, torch and safetensors loads it without this repository. Importing
this module costs mlflow only: the engine is imported when a model is loaded.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

TEXT_GENERATION = "text-generation"  # controlplane.registry.models.ModelTask values
IMAGE_GENERATION = "image-generation"
ARTIFACT = "model"  # the version's files, as the pyfunc's one artifact
ROOT = Path(__file__).resolve().parents[1]
# What loading needs besides mlflow itself (pinned to what wrote the model).
REQUIREMENTS = ("torch", "numpy", "safetensors", "pyyaml", "pandas")

TEXT_DEFAULTS = {"max_tokens": 64, "temperature": 0.8, "top_k": 0, "seed": -1}
IMAGE_DEFAULTS = {"seed": 0, "steps": 0}
MAX_TOKENS = 4096
MAX_IMAGES = 1000


class PredictError(ValueError):
    """Input or params the model cannot use; the message names what to change."""


def _column(model_input: Any, name: str) -> list[Any]:
    """The values of a DataFrame column (`name`, else the first), a Series, array or list."""
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        if len(model_input.columns) == 0:
            raise PredictError(f"the input DataFrame has no columns; give a `{name}` column")
        column = name if name in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if hasattr(model_input, "tolist"):  # a Series or a numpy array
        return list(model_input.tolist())
    if isinstance(model_input, (str, int)):
        return [model_input]
    if isinstance(model_input, dict) and name in model_input:
        return _column(model_input[name], name)
    if isinstance(model_input, Iterable):
        return list(model_input)
    raise PredictError(f"cannot read {type(model_input).__name__} as a list of {name}s")


def _params(params: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    values = dict(defaults)
    for key, value in (params or {}).items():
        if key not in defaults:
            raise PredictError(f"unknown param {key!r}; this model takes {sorted(defaults)}")
        if value is not None:
            values[key] = value
    return values


class EngineTextModel(mlflow.pyfunc.PythonModel):
    """A GPT export: prompts in, generated continuations out."""

    def load_context(self, context) -> None:
        from engine.infer.generate import Generator
        from engine.infer.loading import load_for_generation

        model, tokenizer = load_for_generation(context.artifacts[ARTIFACT])
        self.generator = Generator(model.cpu(), tokenizer)

    # The hint: what MLflow hands over after enforcing the signature (lists work as well).
    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        from engine.infer.generate import SamplingParams

        prompts = ["" if p is None else str(p) for p in _column(model_input, "prompt")]
        if not prompts:
            return []
        values = _params(params, TEXT_DEFAULTS)
        max_tokens = int(values["max_tokens"])
        if not 1 <= max_tokens <= MAX_TOKENS:
            raise PredictError(f"max_tokens must be in [1, {MAX_TOKENS}], got {max_tokens}")
        sampling = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=float(values["temperature"]),
            top_k=int(values["top_k"]) or None,
            seed=None if int(values["seed"]) < 0 else int(values["seed"]),
        )
        result = self.generator.generate(prompts, sampling)
        return [generation.text for generation in result.generations]


class EngineImageModel(mlflow.pyfunc.PythonModel):
    """A vision checkpoint (diffusion, GAN or VAE): digits in, one 8x8 image each out."""

    def load_context(self, context) -> None:
        from engine.vision.train import load_recipe

        folder = Path(context.artifacts[ARTIFACT])
        checkpoints = sorted(folder.glob("*.pt"))
        if len(checkpoints) != 1:
            raise PredictError(
                f"expected one vision checkpoint (*.pt) in {folder}, found {len(checkpoints)}"
            )
        self.recipe, payload = load_recipe(checkpoints[0], device="cpu")
        self.num_classes = int(payload["config"]["model"]["num_classes"])

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list:
        import torch

        from engine.vision.data import check_class
        from engine.vision.evaluate import sample_in_batches

        digits = [check_class(int(d), self.num_classes) for d in _column(model_input, "digit")]
        if not digits:
            return []
        if len(digits) > MAX_IMAGES:
            raise PredictError(f"at most {MAX_IMAGES} digits per call, got {len(digits)}")
        values = _params(params, IMAGE_DEFAULTS)
        options = {}
        if int(values["steps"]) > 0:
            if self.recipe.kind != "diffusion":
                raise PredictError(
                    f"steps is a diffusion setting; this model is a {self.recipe.kind}"
                )
            options["steps"] = int(values["steps"])
        with torch.no_grad():
            images = sample_in_batches(
                self.recipe, torch.tensor(digits), seed=int(values["seed"]), **options
            )
        # (B, 1, H, W) in [-1, 1] -> grey levels in [0, 1], one H x W list of rows each.
        grey = ((images[:, 0].float().clamp(-1, 1) + 1) / 2).round(decimals=4)
        return grey.tolist()


MODEL_CLASSES = {TEXT_GENERATION: EngineTextModel, IMAGE_GENERATION: EngineImageModel}


def signature(task: str):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    if task == TEXT_GENERATION:
        return ModelSignature(
            inputs=Schema([ColSpec("string")]),  # unnamed: a list of prompts works as is
            outputs=Schema([ColSpec("string")]),
            params=ParamSchema(
                [
                    ParamSpec("max_tokens", "long", TEXT_DEFAULTS["max_tokens"]),
                    ParamSpec("temperature", "double", TEXT_DEFAULTS["temperature"]),
                    ParamSpec("top_k", "long", TEXT_DEFAULTS["top_k"]),
                    ParamSpec("seed", "long", TEXT_DEFAULTS["seed"]),
                ]
            ),
        )
    return ModelSignature(
        inputs=Schema([ColSpec("long")]),  # unnamed: a list of digits works as is
        params=ParamSchema(
            [
                ParamSpec("seed", "long", IMAGE_DEFAULTS["seed"]),
                ParamSpec("steps", "long", IMAGE_DEFAULTS["steps"]),
            ]
        ),
    )


def requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            # A local build tag (torch's "+cpu") is not on PyPI: pin the release only.
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _stage_code(into: Path) -> list[str]:
    """The engine package and this module (as `workers.mlflow_pyfunc`) for `code_paths`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    engine = into / "engine"
    shutil.copytree(ROOT / "engine", engine, ignore=ignore)
    workers = into / "workers"
    workers.mkdir()
    (workers / "__init__.py").write_text('"""The engine\'s MLflow pyfunc models."""\n')
    shutil.copyfile(Path(__file__), workers / "mlflow_pyfunc.py")
    return [str(engine), str(workers)]


def save_version_model(
    folder: str | Path, *, task: str, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write an MLflow pyfunc model of the files in `folder` at `path` (which must not exist)."""
    if task not in MODEL_CLASSES:
        raise PredictError(f"unknown task {task!r}; one of {sorted(MODEL_CLASSES)}")
    with tempfile.TemporaryDirectory(prefix="pyfunc-code-") as code, warnings.catch_warnings():
        # mlflow's advice (type hints, an input example, models from code) does not apply:
        # the signature above is explicit and the class is pickled by reference.
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=MODEL_CLASSES[task](),
            artifacts={ARTIFACT: str(folder)},
            code_paths=_stage_code(Path(code)),
            signature=signature(task),
            pip_requirements=requirements(),
            metadata={"task": task, **(metadata or {})},
        )
    return Path(path)
