"""Job parameters: the engine settings a platform job may set, as one JSON Schema per kind.

    python -m engine.jobparams > platform/controlplane/jobs/param_schemas.json

The defaults, ranges, choices and presets are written once, in the engine's config
dataclasses (a field's metadata, engine/configfile.py's ``setting``); this module only says
which of those fields each job kind exposes and under which parameter name, and turns
them into JSON Schema. The platform validates a job's params with that schema and fills
its defaults (it never imports the engine: it reads the checked-in file, which a test
regenerates), and the worker builds the engine config from the filled params without
fallbacks, so the three layers cannot drift apart.

Every parameter carries ``x-engine``: the config key it sets (``train.max_iters``,
``checkpoint.interval``), which the agreement test (tests/test_param_agreement.py) follows.
Extensions the platform reads: ``x-adapters`` (post-training kinds: "always", "optional",
"never"), ``x-default-with-adapters`` (a learning rate's default when the job trains LoRA
adapters), ``x-optional`` (a section left out unless given), ``x-choices-help``,
``x-data-parallel`` / ``x-shardable`` (a training kind's ``resources``: whether it may run
on several processes, and shard with FSDP; engine/train/resources.py).
Platform-only parameters (dataset_version_id, base_job_id, reward_job_id, upload_id,
model_version_id) are
not here: the platform declares them (controlplane/jobs/params.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from typing import Any, Literal

from engine.configfile import BOUNDS
from engine.data.config import InputConfig, TokenizeConfig
from engine.evaluate.config import EvalConfig
from engine.finetune import config as finetune
from engine.finetune.lora import LoRAConfig
from engine.finetune.ppo import PPOConfig
from engine.models.gpt import GPTConfig
from engine.train import config as pretrain
from engine.train import resources
from engine.train.resources import ResourcesConfig
from engine.vision import config as vision

POSTTRAIN_KINDS = finetune.KINDS
IMAGE_KINDS = vision.KINDS
KINDS = ("pretrain", *IMAGE_KINDS, *POSTTRAIN_KINDS, "data_pipeline", "evaluate")
_RULES = (*BOUNDS, "minItems", "maxItems", "minLength", "maxLength")


def _field(cls: type, name: str) -> dataclasses.Field:
    for spec in dataclasses.fields(cls):
        if spec.name == name:
            return spec
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _type_schema(hint: Any) -> dict[str, Any]:
    """JSON Schema of a field's type: None in a union means "left out" (the default)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (hint,) = [option for option in typing.get_args(hint) if option is not type(None)]
        origin = typing.get_origin(hint)
    if origin is Literal:
        return {"type": "string", "enum": list(typing.get_args(hint))}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": _type_schema(item)}
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return {"type": names[hint]}


def leaf(cls: type, name: str, engine_key: str, *, default: bool = True) -> dict[str, Any]:
    """One parameter: a dataclass field's type, range, help and (unless ``default`` is
    False, where a preset decides) its default."""
    spec = _field(cls, name)
    schema = _type_schema(typing.get_type_hints(cls)[name])
    rules = {rule: spec.metadata[rule] for rule in _RULES if rule in spec.metadata}
    if schema["type"] == "array":
        schema["items"].update({k: v for k, v in rules.items() if k.endswith("Length")})
        schema.update({k: v for k, v in rules.items() if k.endswith("Items")})
    else:
        schema.update(rules)
    if default:
        value = (
            spec.default_factory()
            if spec.default_factory is not dataclasses.MISSING
            else spec.default
        )
        if value is not None:
            schema["default"] = value
    if spec.metadata.get("help"):
        schema["description"] = spec.metadata["help"]
    schema["x-engine"] = engine_key
    return schema


def section(
    cls: type, names: list[str], engine_section: str, *, default: bool = True
) -> dict[str, Any]:
    """A nested object of parameters, all from one dataclass."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: leaf(cls, name, f"{engine_section}.{name}", default=default) for name in names
        },
    }


def choice(choices: list[str], default: str, helps: dict[str, str], engine_key: str) -> dict:
    return {
        "type": "string",
        "enum": list(choices),
        "default": default,
        "x-choices-help": {name: helps[name] for name in choices},
        "x-engine": engine_key,
    }


def _kind_schema(kind: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{kind} job parameters",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        **extra,
    }


def _preset_help(preset: str) -> str:
    shape = pretrain.PRESETS[preset]
    return (
        f"{shape['n_layer']} layers, {shape['n_embd']} wide, context {shape['block_size']} "
        f"({pretrain.PRESET_HELP[preset]})"
    )


def resources_schema(kind: str) -> dict[str, Any]:
    """Devices, nodes and strategy of a training job, with what the kind can do of them."""
    schema = section(ResourcesConfig, ["devices", "nodes", "strategy"], "resources")
    schema["properties"]["strategy"]["x-choices-help"] = dict(resources.STRATEGY_HELP)
    schema["x-data-parallel"] = kind in resources.DATA_PARALLEL_KINDS
    schema["x-shardable"] = kind in resources.SHARDABLE_KINDS
    return schema


def pretrain_schema() -> dict[str, Any]:
    presets = list(pretrain.PRESETS)
    model = section(GPTConfig, ["block_size", "dropout"], "model")
    # The preset decides the context length unless the job sets one.
    model["properties"]["block_size"] = leaf(
        GPTConfig, "block_size", "model.block_size", default=False
    )
    train = ["max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"]
    return _kind_schema(
        "pretrain",
        {
            "preset": choice(
                presets,
                pretrain.DEFAULT_PRESET,
                {name: _preset_help(name) for name in presets},
                "preset (engine.train.config.PRESETS: the model's shape)",
            ),
            "model": model,
            "train": section(pretrain.TrainConfig, train, "train"),
            "optim": section(
                pretrain.OptimConfig, ["lr", "min_lr", "warmup_iters", "weight_decay"], "optim"
            ),
            "checkpoint_interval": leaf(
                pretrain.CheckpointConfig, "interval", "checkpoint.interval"
            ),
            "seed": leaf(pretrain.RunConfig, "seed", "seed"),
            "sample_prompts": leaf(pretrain.SamplesConfig, "prompts", "samples.prompts"),
            "sample_tokens": leaf(pretrain.SamplesConfig, "tokens", "samples.tokens"),
            "device": leaf(pretrain.TrainConfig, "device", "train.device"),
            "resources": resources_schema("pretrain"),
        },
    )


def image_schema(kind: str) -> dict[str, Any]:
    train = ["steps", "batch_size", "lr", "log_interval", "checkpoint_interval", "sample_interval"]
    run_config = vision.RUN_CONFIGS[kind]
    return _kind_schema(
        kind,
        {
            "preset": choice(
                list(vision.PRESETS),
                vision.DEFAULT_PRESET,
                vision.PRESET_HELP,
                "preset (engine.vision.config.preset_raw: the whole config)",
            ),
            # The preset's values apply to what the job leaves out.
            "train": section(vision.TrainConfig, train, "train", default=False),
            "eval_per_class": leaf(vision.EvaluationConfig, "per_class", "evaluation.per_class"),
            "seed": leaf(run_config, "seed", "seed"),
            "device": leaf(vision.TrainConfig, "device", "train.device"),
            "resources": resources_schema(kind),
        },
    )


def _adapters(kind: str) -> str:
    if kind in finetune.ADAPTER_KINDS:
        return "always"
    return "never" if kind == "sft" else "optional"


def posttrain_schema(kind: str) -> dict[str, Any]:
    names = [
        "steps",
        "batch_size",
        "lr",
        "warmup_steps",
        "log_interval",
        "eval_interval",
        "checkpoint_interval",
    ]
    train = section(finetune.TrainConfig, names, "train")
    # lr is None in the engine ("the kind's default"): the job stores the number it gets.
    adapters = _adapters(kind)
    lr = train["properties"]["lr"]
    if adapters == "always":
        lr["default"] = finetune.DEFAULT_LR_ADAPTERS[kind]
    else:
        lr["default"] = finetune.DEFAULT_LR[kind]
        if adapters == "optional":
            lr["x-default-with-adapters"] = finetune.DEFAULT_LR_ADAPTERS[kind]
    properties: dict[str, Any] = {
        "pairs_count": leaf(finetune.DataConfig, "count", "data.count"),
    }
    if kind in ("reward", "dpo"):  # the kinds that learn from the rejected answers
        properties["pairs_corruption"] = leaf(finetune.DataConfig, "corruption", "data.corruption")
    properties["train"] = train
    if adapters != "never":
        lora = section(LoRAConfig, ["r", "alpha", "dropout", "target_modules"], "lora")
        if adapters == "optional":
            lora["x-optional"] = True  # given: the job trains adapters instead of all weights
        properties["lora"] = lora
    if kind == "dpo":
        properties["dpo"] = section(
            finetune.DPOSection, ["beta", "label_smoothing", "precompute_reference"], "dpo"
        )
    if kind == "ppo":
        ppo = [
            "rollout_batch_size",
            "max_new_tokens",
            "kl_coef",
            "ppo_epochs",
            "clip_range",
            "temperature",
        ]
        properties["ppo"] = section(PPOConfig, ppo, "ppo")
    properties["seed"] = leaf(finetune.FinetuneRunConfig, "seed", "seed")
    properties["device"] = leaf(finetune.TrainConfig, "device", "train.device")
    properties["resources"] = resources_schema(kind)
    return _kind_schema(kind, properties, **{"x-adapters": adapters})


def data_pipeline_schema() -> dict[str, Any]:
    return _kind_schema(
        "data_pipeline",
        {
            "pipeline": {
                "type": "object",
                "description": "the engine's pipeline config (stages and their settings)",
                "x-engine": "python -m engine.data.config validate",
            },
            "tokenizer": section(TokenizeConfig, ["kind", "vocab_size"], "tokenize"),
            "val_fraction": leaf(TokenizeConfig, "val_fraction", "tokenize.val_fraction"),
            "text_field": leaf(InputConfig, "text_field", "inputs[].text_field"),
        },
    )


def evaluate_schema() -> dict[str, Any]:
    """Every EvalConfig field is a parameter of the same name (engine/evaluate/config.py)."""
    names = [spec.name for spec in dataclasses.fields(EvalConfig)]
    return _kind_schema("evaluate", {name: leaf(EvalConfig, name, name) for name in names})


def job_schemas() -> dict[str, dict[str, Any]]:
    """Every kind's params schema, keyed by kind (the platform's param_schemas.json)."""
    schemas = {"pretrain": pretrain_schema()}
    schemas.update({kind: image_schema(kind) for kind in IMAGE_KINDS})
    schemas.update({kind: posttrain_schema(kind) for kind in POSTTRAIN_KINDS})
    schemas["data_pipeline"] = data_pipeline_schema()
    schemas["evaluate"] = evaluate_schema()
    return schemas


def schemas_json() -> str:
    """The checked-in file's exact text (sorted keys: a reviewable diff per change)."""
    header = {"$comment": "generated by `python -m engine.jobparams`; edit the engine configs"}
    return json.dumps({**header, **job_schemas()}, indent=1, sort_keys=True) + "\n"


def main() -> int:
    sys.stdout.write(schemas_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
