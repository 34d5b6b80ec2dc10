"""The job forms offer what the API accepts: choices, defaults and ranges from the schemas.

The training form used to start at 2000 steps and lr 1e-3 while the engine's defaults were
5000 and 6e-4, and its presets were a second copy of the worker's list.
"""

import pytest

from engine.finetune.ppo import PPOConfig
from engine.train.config import PRESETS, RunConfig


def test_the_training_form_starts_from_the_engines_defaults_and_presets():
    from controlplane.dashboard.forms import TrainJobForm

    fields = TrainJobForm().fields
    defaults = RunConfig()
    assert [name for name, _ in fields["preset"].choices] == list(PRESETS)
    assert fields["max_iters"].initial == defaults.train.max_iters
    assert fields["lr"].initial == defaults.optim.lr
    assert fields["min_lr"].initial == defaults.optim.min_lr
    assert fields["checkpoint_interval"].initial == defaults.checkpoint.interval
    assert (fields["max_iters"].min_value, fields["max_iters"].max_value) == (1, 10_000_000)
    assert [name for name, _ in fields["device"].choices] == ["auto", "cpu", "cuda"]


@pytest.mark.parametrize(
    ("form_name", "field", "kind", "dotted"),
    [
        ("InspectJobForm", "preview_records", "inspect", "preview_records"),
        ("PipelineJobForm", "vocab_size", "data_pipeline", "tokenizer.vocab_size"),
        ("PipelineJobForm", "val_fraction", "data_pipeline", "val_fraction"),
        ("TrainJobForm", "devices", "pretrain", "resources.devices"),
        ("TrainJobForm", "nodes", "pretrain", "resources.nodes"),
        ("PostTrainJobForm", "steps", "sft", "train.steps"),
        ("PostTrainJobForm", "lora_r", "lora", "lora.r"),
        ("PostTrainJobForm", "kl_coef", "ppo", "ppo.kl_coef"),
    ],
)
def test_each_job_form_field_has_its_parameters_range(form_name, field, kind, dotted):
    from controlplane.dashboard import forms
    from controlplane.jobs.params import param_leaf

    form_field = getattr(forms, form_name)().fields[field]
    leaf = param_leaf(kind, dotted)
    assert form_field.min_value == leaf.get("minimum", leaf.get("exclusiveMinimum"))
    assert form_field.max_value == leaf.get("maximum", leaf.get("exclusiveMaximum"))
    if field != "lora_r":  # blank on purpose: set, it turns adapters on for reward/dpo/ppo
        assert form_field.initial == leaf.get("default")


def test_the_ppo_coefficient_starts_at_the_engines():
    from controlplane.dashboard.forms import PostTrainJobForm

    assert PostTrainJobForm().fields["kl_coef"].initial == PPOConfig().kl_coef


def test_the_training_form_asks_for_devices_machines_and_strategy():
    from controlplane.dashboard.forms import TrainJobForm

    base = {
        "preset": "tiny",
        "max_iters": 10,
        "batch_size": 2,
        "lr": 0.001,
        "min_lr": 0.0001,
        "warmup_iters": 0,
        "eval_interval": 0,
        "checkpoint_interval": 0,
        "device": "cuda",
    }
    form = TrainJobForm({**base, "devices": 8, "nodes": 2, "strategy": "fsdp"})
    assert form.is_valid(), form.errors
    assert form.job_params(7)["resources"] == {"devices": 8, "nodes": 2, "strategy": "fsdp"}
    blank = TrainJobForm(base)
    assert blank.is_valid(), blank.errors
    assert blank.job_params(7)["resources"] == {}  # the schema's defaults: 1 x 1, ddp
    assert not TrainJobForm({**base, "devices": 0}).is_valid()
    assert [c for c, _ in TrainJobForm().fields["strategy"].choices] == ["ddp", "fsdp"]
