"""The job schemas come from the config fields, and the checked-in file is current."""

import dataclasses
from pathlib import Path

import pytest

from engine import jobparams
from engine.configfile import build, setting
from engine.train.config import ConfigError, config_from_dict

SCHEMA_FILE = (
    Path(jobparams.__file__).resolve().parents[1] / "platform/controlplane/jobs/param_schemas.json"
)


def test_the_checked_in_schema_file_is_current():
    with open(SCHEMA_FILE, encoding="utf-8") as handle:
        assert handle.read() == jobparams.schemas_json(), "stale: run `make schemas`"


def test_a_field_range_is_both_the_schema_and_the_engines_check():
    @dataclasses.dataclass
    class Section:
        steps: int = setting(10, minimum=1, maximum=100, help="optimizer steps")

    leaf = jobparams.leaf(Section, "steps", "train.steps")
    assert leaf == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 10,
        "description": "optimizer steps",
        "x-engine": "train.steps",
    }
    assert build(Section, {"steps": 100}, ConfigError).steps == 100
    with pytest.raises(ConfigError, match="train.steps must be at most 100"):
        build(Section, {"steps": 101}, ConfigError, "train.")


def test_the_engine_refuses_what_the_pretrain_schema_refuses():
    with pytest.raises(ConfigError, match="train.max_iters must be at most 10000000"):
        config_from_dict({"train": {"max_iters": 10_000_001}})
    with pytest.raises(ConfigError, match="model.block_size must be at least 8"):
        config_from_dict({"model": {"block_size": 4}})


def test_every_kind_has_a_schema_and_every_parameter_names_its_engine_key():
    schemas = jobparams.job_schemas()
    assert set(schemas) == set(jobparams.KINDS)

    def leaves(node):
        for value in node["properties"].values():
            if "properties" in value:
                yield from leaves(value)
            else:
                yield value

    for kind, schema in schemas.items():
        assert all("x-engine" in leaf for leaf in leaves(schema)), kind
