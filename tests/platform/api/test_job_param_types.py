"""Every job parameter is type-checked: any value in any place is a field error, never a crash.

`{"preset": []}` raised "unhashable type" (issue 11). This test puts hostile values of
every JSON type in every place of every kind's parameters and asks the validator: it must
answer with a JobRequestError naming fields, or accept, and what it accepts must be
storable JSON (finite numbers only).
"""

import json

import pytest

pytestmark = pytest.mark.django_db

HOSTILE = [[], {}, [[]], {"a": [1]}, "x", "", "²", True, None, 0, -1, 1.5, 10**30, -(10**30), 1e308]

_TRAIN = {"steps": 1, "batch_size": 2, "lr": 0.001, "log_interval": 1}
TEMPLATES = {
    "inspect": {"upload_id": 1, "preview_records": 5, "read_rate_limit_mb_s": 1.0},
    "data_pipeline": {
        "dataset_version_id": 1,
        "pipeline": {},
        "tokenizer": {"kind": "bpe", "vocab_size": 300},
        "val_fraction": 0.1,
        "text_field": "text",
    },
    "pretrain": {
        "dataset_version_id": 1,
        "preset": "tiny",
        "model": {"block_size": 16, "dropout": 0.0},
        "train": {"max_iters": 10, "batch_size": 2, "eval_interval": 0},
        "optim": {"lr": 0.001, "min_lr": 0.0001, "warmup_iters": 0},
        "checkpoint_interval": 0,
        "seed": 1,
        "sample_prompts": ["a"],
        "sample_tokens": 10,
        "device": "cpu",
    },
    **{
        kind: {
            "preset": "tiny",
            "train": {**_TRAIN, "checkpoint_interval": 0},
            "eval_per_class": 0,
            "device": "cpu",
            "seed": 0,
        }
        for kind in ("diffusion", "gan", "vae")
    },
    "sft": {"base_job_id": 1, "pairs_count": 16, "train": _TRAIN, "seed": 1, "device": "cpu"},
    "lora": {
        "base_job_id": 1,
        "dataset_version_id": 1,
        "train": _TRAIN,
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["*.attn.c_attn"]},
    },
    "dpo": {
        "base_job_id": 1,
        "train": _TRAIN,
        "dpo": {"beta": 0.1, "label_smoothing": 0.0, "precompute_reference": False},
    },
    "ppo": {
        "base_job_id": 1,
        "reward_job_id": 2,
        "ppo": {"rollout_batch_size": 2, "max_new_tokens": 4, "kl_coef": 0.1, "temperature": 1.0},
    },
}


def _places(params: dict, prefix: tuple = ()):
    """Every key path in params, containers and leaves (list items included)."""
    for key, value in params.items():
        path = (*prefix, key)
        yield path
        if isinstance(value, dict):
            yield from _places(value, path)
        elif isinstance(value, list):
            for index in range(len(value)):
                yield (*path, index)


def _replaced(params, path: tuple, value):
    copy = json.loads(json.dumps(params))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


@pytest.fixture(autouse=True)
def _engine_answers_quickly(monkeypatch):
    # The pipeline's own settings are checked by the engine (a subprocess, its own tests);
    # here only the platform's handling of every other parameter is under test.
    monkeypatch.setattr(
        "controlplane.engine_tools.pipeline_validate", lambda raw: ({"stages": []}, None)
    )


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_no_value_anywhere_crashes_the_validator(team, kind):
    from controlplane.jobs.kinds import validate_job_request
    from controlplane.jobs.requests import JobRequestError

    template = TEMPLATES[kind]
    checked = 0
    for path in _places(template):
        for value in HOSTILE:
            params = _replaced(template, path, value)
            try:
                request = validate_job_request(project=team.project, kind=kind, params=params)
            except JobRequestError as error:
                assert error.errors and all(
                    isinstance(m, str) for ms in error.errors.values() for m in ms
                ), (path, value)
            else:
                json.dumps(request.params, allow_nan=False)  # storable in jsonb
            checked += 1
    assert checked >= len(HOSTILE) * 3
