"""Pipeline configs: YAML/JSON in, errors that name the bad key out."""

from __future__ import annotations

import json

import pytest

from engine.data.config import ConfigError, config_to_dict, load_pipeline_config


def _yaml(tmp_path, text: str):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_yaml_config_builds_the_stages_in_order_with_their_settings(tmp_path):
    config = load_pipeline_config(
        _yaml(
            tmp_path,
            """
inputs:
  - {path: data/raw, subject_field: user}
stages:
  - normalize
  - quality: {min_words: 20}
  - pii: {types: [EMAIL, IBAN]}
  - near_dedup: {bands: 20, rows: 5}
output: {path: data/clean, compression: zstd}
strict: true
""",
        )
    )
    assert [s.name for s in config.stages] == ["normalize", "quality", "pii", "near_dedup"]
    assert config.stage("quality").params.min_words == 20
    assert config.stage("quality").params.max_mean_word_length == 10.0  # Gopher default kept
    assert config.stage("near_dedup").params.bands == 20
    assert config.inputs[0].subject_field == "user" and config.strict
    assert (
        load_pipeline_config(config_to_dict(config)) == config
    )  # what the report records runs again


def test_json_config_and_default_stages(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"inputs": [{"path": "x.jsonl"}]}))
    config = load_pipeline_config(path)
    assert [s.name for s in config.stages] == [
        "normalize",
        "quality",
        "repetition",
        "pii",
        "toxicity",
        "exact_dedup",
        "near_dedup",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "stages: [normalize, {quality: {min_wrds: 3}}]",
            r"unknown key 'stages\[1\]\.quality\.min_wrds' "
            r"\(did you mean 'stages\[1\]\.quality\.min_words'\?\)",
        ),
        (
            "stages: [normalize, {quality: {min_words: many}}]",
            r"stages\[1\]\.quality\.min_words must be an integer, got 'many'",
        ),
        (
            "stages: [normalise]",
            r"stages\[0\]: unknown stage 'normalise' \(did you mean 'normalize'\?\)",
        ),
        (
            "stages: [translate]",
            r"stages\[0\]: unknown stage .translate. \(known stages: normalize",
        ),
        ("stages: [near_dedup, pii]", r"stages\[1\]: 'pii' comes after 'near_dedup'"),
        (
            "stages: [{pii: {types: [EMAIL, SSN]}}]",
            r"stages\[0\]\.pii\.types\[1\]: 'SSN' is not one of EMAIL",
        ),
        (
            "inputs: [{path: a, format: xml}]",
            r"inputs\[0\]\.format: 'xml' is not one of auto, jsonl",
        ),
        ("inputs: [{format: jsonl}]", r"missing key 'inputs\[0\]\.path'"),
        ("inputs: [{path: a, formt: jsonl}]", r"did you mean 'inputs\[0\]\.format'"),
        ("output: {shard_records: 0}", r"output\.shard_records: must be 1 or more"),
        ("strict: maybe", r"strict must be true or false, got 'maybe'"),
        ("stages: [normalize, normalize]", r"stages\[1\]: stage 'normalize' appears twice"),
        ("inputs: [path: a\n  - b", r"not valid YAML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(_yaml(tmp_path, text))


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_pipeline_config(tmp_path / "nope.yaml")


def test_the_shipped_example_config_is_valid():
    from pathlib import Path

    import engine.data

    example = Path(engine.data.__file__).with_name("examples") / "shakespeare.yaml"
    config = load_pipeline_config(example)
    assert config.inputs[1].subject_field == "user" and config.output.compression == "zstd"
