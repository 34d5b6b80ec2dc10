"""Platform, worker and engine agree on every job kind's parameters.

For each kind: the schema's defaults are the engine dataclasses' defaults; a job created
with no settings yields, on the worker side (the worker's own builder), the engine's
default config; and every range refuses the same values in the platform and the engine.
(Before the schemas, max_iters was 2000 on the platform and 5000 in the engine, PPO's
rollouts 8/32/2 against 16/64/4, and the worker had fallbacks of its own.)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine import jobparams
from engine.data import config as data_config
from engine.evaluate import config as eval_config
from engine.finetune import config as finetune_config
from engine.train import config as train_config
from engine.train import resources as train_resources
from engine.vision import config as vision_config
from workers.jobs import data_pipeline, evaluate, finetune, images, pretrain
from workers.runtime import JobFailed

# What the worker sets itself, not job settings: where files go, the single-process
# runtime, how many checkpoints stay on its disk, the PPO sampler's seed (the job's).
WORKER_CHOICES = {
    "pretrain": {
        "run_dir",
        "data.path",
        "train.progress",
        "train.parallel",
        "checkpoint.keep_last",
    },
    "image": {"run_dir"},
    "posttrain": {"run_dir", "base.path", "base.reward_model", "train.lr", "ppo.seed"},
    "evaluate": set(),
}


class _Files:
    def filter(self, **_):
        return self

    def exclude(self, **_):
        return self

    def order_by(self, *_):
        return []


_VERSION = SimpleNamespace(pk=1, files=_Files(), dataset=SimpleNamespace(subject_field=""))
# The platform-only fields, resolved to stand-ins: what is under test is the engine's part.
PLATFORM_VALUES = {
    "pretrain": {"dataset_version_id": 1},
    "data_pipeline": {"dataset_version_id": 1},
    **{kind: {"base_job_id": 1} for kind in jobparams.POSTTRAIN_KINDS},
    "ppo": {"base_job_id": 1, "reward_job_id": 2},
    "evaluate": {"model_version_id": 1},
}
# An image model's version: evaluated on the built-in digits, no dataset version to find.
_MODEL_VERSION = SimpleNamespace(
    pk=1, number=1, model=SimpleNamespace(name="digits", task="image-generation")
)


@pytest.fixture
def platform_lookups(monkeypatch, settings):
    settings.TRAINING_QUEUE = "cpu"
    monkeypatch.setattr("controlplane.jobs.kinds._token_shard_version", lambda *a: _VERSION)
    monkeypatch.setattr("controlplane.jobs.kinds._ready_text_version", lambda *a: _VERSION)
    monkeypatch.setattr("controlplane.jobs.posttrain._base_model", lambda *a: [])
    monkeypatch.setattr("controlplane.jobs.posttrain._reward_model", lambda *a: [])
    monkeypatch.setattr("controlplane.jobs.evaluate.ready_model_version", lambda *a: _MODEL_VERSION)
    monkeypatch.setattr("controlplane.jobs.evaluate._model_files", lambda *a: [])


def stored_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """What the platform stores on the job for these params (as jsonb gives it back)."""
    from controlplane.jobs.kinds import validate_job_request

    request = validate_job_request(
        project=None, kind=kind, params={**PLATFORM_VALUES.get(kind, {}), **params}
    )
    return json.loads(json.dumps(request.params))


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every setting of a config as {"dotted.key": value}."""
    out = {}
    for name, value in (config if isinstance(config, dict) else dataclasses.asdict(config)).items():
        if isinstance(value, dict) and name != "trainable_tokens":
            out.update(flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def without(settings: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key not in keys}


def worker_config(kind: str, params: dict[str, Any], tmp_path: Path):
    """The engine config the worker builds from stored params, with its own builder."""
    if kind == "pretrain":
        raw = pretrain.run_config(params, tmp_path / "run", tmp_path / "data")
        return train_config.config_from_dict(raw)
    if kind in jobparams.IMAGE_KINDS:
        return vision_config.config_from_dict(kind, images.run_config(kind, params, tmp_path))
    if kind == "evaluate":
        return evaluate.eval_settings(params)
    return finetune_config.config_from_dict(kind, finetune.run_config(kind, params, tmp_path))


def engine_default(kind: str, **raw: Any):
    if kind == "pretrain":
        model = train_config.preset_model(train_config.DEFAULT_PRESET)
        return train_config.config_from_dict({"model": model})
    if kind in jobparams.IMAGE_KINDS:
        preset = vision_config.preset_raw(kind, vision_config.DEFAULT_PRESET)
        return vision_config.config_from_dict(kind, preset)
    if kind == "evaluate":
        return eval_config.EvalConfig()
    base = {"path": "base", "reward_model": "reward" if kind == "ppo" else ""}
    return finetune_config.config_from_dict(kind, {"base": base, **raw})


def schema_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, leaf in schema["properties"].items():
        if leaf.get("type") == "object" and "properties" in leaf:
            out.update({f"{name}.{k}": v for k, v in schema_defaults(leaf).items()})
        elif "default" in leaf:
            out[name] = leaf["default"]
    return out


@pytest.mark.parametrize("kind", jobparams.KINDS)
def test_the_checked_in_schema_defaults_are_the_engine_dataclass_defaults(kind):
    from controlplane.jobs.params import param_schema

    schema = param_schema(kind)
    assert schema == json.loads(json.dumps(jobparams.job_schemas()[kind]))  # file is current
    for dotted, default in schema_defaults(schema).items():
        leaf = schema
        for part in dotted.split("."):
            leaf = leaf["properties"][part]
        engine_key = leaf["x-engine"]
        if engine_key.startswith("resources."):
            engine = flat(train_resources.ResourcesConfig())[engine_key.removeprefix("resources.")]
        elif dotted == "preset":
            engine = (train_config if kind == "pretrain" else vision_config).DEFAULT_PRESET
        elif kind == "pretrain" and engine_key.startswith("samples."):
            engine = flat(train_config.SamplesConfig())[engine_key.removeprefix("samples.")]
        elif engine_key.startswith("evaluation."):
            engine = vision_config.EvaluationConfig().per_class
        elif engine_key.startswith("tokenize."):
            engine = flat(data_config.TokenizeConfig())[engine_key.removeprefix("tokenize.")]
        elif engine_key == "inputs[].text_field":
            engine = data_config.InputConfig(path="x").text_field
        elif kind == "evaluate":
            engine = flat(eval_config.EvalConfig())[engine_key]
        elif kind == "pretrain":
            engine = flat(train_config.RunConfig())[engine_key]
        elif kind in jobparams.IMAGE_KINDS:
            engine = flat(vision_config.RUN_CONFIGS[kind]())[engine_key]
        elif engine_key == "train.lr":
            engine = engine_default(kind).lr  # the kind's learning rate (None in the field)
        else:
            engine = flat(engine_default(kind))[engine_key]
        assert default == engine, (kind, dotted)


@pytest.mark.parametrize("kind", [k for k in jobparams.KINDS if k != "data_pipeline"])
def test_a_job_with_no_settings_trains_with_the_engine_defaults(kind, platform_lookups, tmp_path):
    params = stored_params(kind, {})
    built = worker_config(kind, params, tmp_path)
    default = engine_default(kind)
    group = (
        kind
        if kind in ("pretrain", "evaluate")
        else "image"
        if kind in jobparams.IMAGE_KINDS
        else "posttrain"
    )
    assert without(flat(built), WORKER_CHOICES[group]) == without(
        flat(default), WORKER_CHOICES[group]
    )
    if group == "posttrain":
        assert built.lr == default.lr
    if kind == "pretrain":
        samples = train_config.samples_config(params["sample_prompts"], params["sample_tokens"])
        assert samples == train_config.SamplesConfig()
    if group == "image":
        assert params["eval_per_class"] == vision_config.EvaluationConfig().per_class


@pytest.mark.parametrize("kind", ["reward", "dpo", "ppo"])
def test_adapters_on_an_optional_kind_take_the_engines_adapter_rate(
    kind, platform_lookups, tmp_path
):
    built = worker_config(kind, stored_params(kind, {"lora": {}}), tmp_path)
    default = engine_default(kind, use_lora=True)
    assert built.adapters and built.lr == default.lr
    assert built.lora == default.lora


def test_the_data_pipeline_with_no_settings_runs_the_engine_defaults(platform_lookups, tmp_path):
    params = stored_params("data_pipeline", {})  # the engine is asked in a subprocess
    inputs = [tmp_path / "input.jsonl"]
    built = data_pipeline._pipeline_config(params, inputs)
    default = data_config.load_pipeline_config({"inputs": [{"path": str(inputs[0])}]})
    assert built == default
    assert data_pipeline._tokenize_config(params) == data_config.TokenizeConfig()


def _probes(leaf: dict[str, Any]) -> list[Any]:
    """Values at and just beyond each end of a numeric range."""
    values = []
    step = 1 if leaf["type"] == "integer" else None
    for bound, outside in (("minimum", -1), ("maximum", 1)):
        if bound in leaf:
            edge = leaf[bound]
            values += [edge, edge + outside * (step or max(abs(edge) * 0.5, 1e-3))]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in leaf:
            values.append(leaf[bound])
    return values


def _numeric_leaves(schema: dict[str, Any], prefix: str = ""):
    for name, leaf in schema["properties"].items():
        if leaf.get("type") == "object" and "properties" in leaf:
            yield from _numeric_leaves(leaf, f"{prefix}{name}.")
        elif leaf.get("type") in ("integer", "number"):
            yield f"{prefix}{name}", leaf


def _with(params: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *sections, name = dotted.split(".")
    copy = json.loads(json.dumps(params))
    node = copy
    for section in sections:
        node = node.setdefault(section, {})
    node[name] = value
    return copy


def _engine_refuses(kind: str, params: dict[str, Any], tmp_path: Path) -> bool:
    errors = (
        train_config.ConfigError,
        vision_config.ConfigError,
        finetune_config.ConfigError,
        data_config.ConfigError,
        train_resources.ResourcesError,
    )
    try:
        if kind == "data_pipeline":
            data_pipeline._tokenize_config(params)
        else:
            worker_config(kind, params, tmp_path)
        if "resources" in params:  # what the worker builds to launch the job's processes
            train_resources.job_resources(kind, params["resources"])
        if kind == "pretrain":
            train_config.samples_config(params["sample_prompts"], params["sample_tokens"])
        if kind in jobparams.IMAGE_KINDS:
            vision_config.evaluation_config(params["eval_per_class"])
    except (*errors, JobFailed):
        return True
    return False


@pytest.mark.parametrize("kind", jobparams.KINDS)
def test_ranges_refuse_the_same_values_in_platform_and_engine(
    kind, platform_lookups, monkeypatch, tmp_path
):
    from controlplane.jobs.params import param_schema
    from controlplane.jobs.requests import JobRequestError

    # The pipeline's stages are the engine's own config, checked by the engine itself.
    monkeypatch.setattr(
        "controlplane.engine_tools.pipeline_validate", lambda raw: ({"stages": []}, None)
    )
    base = {"lora": {}} if kind in ("reward", "dpo", "ppo") else {}
    schema = param_schema(kind)
    probed = 0
    for dotted, leaf in _numeric_leaves(schema):
        for value in _probes(leaf):
            given = _with(base, dotted, value)
            try:
                params = stored_params(kind, given)
            except JobRequestError as error:
                platform_refuses, params = True, error
            else:
                platform_refuses = False
            # The engine sees the value as the platform would have stored it.
            engine_params = _with(stored_params(kind, base), dotted, value)
            assert platform_refuses == _engine_refuses(kind, engine_params, tmp_path), (
                kind,
                dotted,
                value,
                params,
            )
            probed += 1
    assert probed >= 4


@pytest.mark.django_db
@pytest.mark.parametrize("kind", jobparams.IMAGE_KINDS)
def test_a_stored_job_with_no_settings_reads_back_as_the_engine_default(
    kind, team, settings, tmp_path
):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    settings.TRAINING_QUEUE = "cpu"
    job = job_create(project=team.project, kind=kind, actor=team.engineer, params={})
    params = Job.objects.get(pk=job.pk).params  # as the worker's JobSpec carries it
    built = worker_config(kind, params, tmp_path / "run")
    assert without(flat(built), {"run_dir"}) == without(flat(engine_default(kind)), {"run_dir"})


@pytest.mark.django_db(transaction=True)
def test_job_create_validates_before_its_transaction_opens(team, make_ready_version, monkeypatch):
    """The data pipeline's config is checked by the engine in a subprocess (~0.8 s): not
    while the job's transaction holds a connection."""
    from django.db import connection

    from controlplane import engine_tools
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.services import job_create

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Text", slug="text", kind="text"
    )
    version = make_ready_version(dataset, team.engineer, {"a.txt": b"hello world"})
    seen = []
    real = engine_tools.pipeline_validate

    def recording(raw):
        seen.append(connection.in_atomic_block)
        return real(raw)

    monkeypatch.setattr("controlplane.engine_tools.pipeline_validate", recording)
    job = job_create(
        project=team.project,
        kind="data_pipeline",
        actor=team.engineer,
        params={"dataset_version_id": version.pk},
    )
    assert seen == [False]
    assert job.params["tokenizer"] == {"kind": "char", "vocab_size": 4096}
