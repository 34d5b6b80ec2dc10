"""Pipeline configuration: a dataclass tree loaded from YAML/JSON with errors that name the key.

    inputs:
      - path: data/raw/            # a file or a folder (read recursively, sorted)
        format: auto               # jsonl | text | parquet | csv; auto: from the file name
        subject_field: user_id     # optional: builds the subject index for GDPR erasure
    stages:                        # per-record stages in order, then the global dedup stages
      - normalize
      - quality: {min_words: 50}
      - repetition
      - pii
      - toxicity: {threshold: 0.02}
      - exact_dedup
      - near_dedup: {bands: 9, rows: 13}
    output: {path: data/clean, shard_records: 50000, compression: zstd}
    strict: false

``load_pipeline_config(path_or_dict)`` returns a ``PipelineConfig``; a bad key raises
``ConfigError("stages[1].quality.min_wrds: unknown key; known keys: ...")``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.dedup import ExactDedupConfig, NearDedupConfig
from engine.data.normalize import NormalizeConfig
from engine.data.pii import PII_TYPES, PIIConfig
from engine.data.quality import QualityConfig, RepetitionConfig
from engine.data.toxicity import ToxicityConfig

INPUT_FORMATS = ("auto", "jsonl", "text", "parquet", "csv")
TEXT_UNITS = ("file", "paragraph", "line")
COMPRESSIONS = ("none", "zstd")

# stage name -> parameters dataclass; per-record stages run in the listed order in workers,
# dedup stages need every record of the run and so come after all of them.
RECORD_STAGES: dict[str, type] = {
    "normalize": NormalizeConfig,
    "quality": QualityConfig,
    "repetition": RepetitionConfig,
    "pii": PIIConfig,
    "toxicity": ToxicityConfig,
}
GLOBAL_STAGES: dict[str, type] = {"exact_dedup": ExactDedupConfig, "near_dedup": NearDedupConfig}


class ConfigError(ValueError):
    """A pipeline config that cannot run; the message starts with the path of the bad key."""


@dataclass
class InputConfig:
    path: str
    format: str = "auto"  # jsonl | text | parquet | csv; auto: from the extension (.gz/.zst ok)
    text_field: str = "text"  # JSONL/CSV/Parquet field that holds the document
    subject_field: str = ""  # field naming the data subject (person); enables the subject index
    text_unit: str = "file"  # plain text: one document per file, per paragraph or per line


@dataclass
class OutputConfig:
    path: str = ""  # output folder; `--output` on the command line overrides it
    shard_records: int = 50_000  # records per output JSONL shard
    compression: str = "none"  # "zstd": records-00000.jsonl.zst
    text_field: str = "text"  # name of the cleaned text in the output records


@dataclass
class StageConfig:
    name: str
    params: Any  # the stage's own dataclass (QualityConfig, PIIConfig ...)


def _default_stages() -> list[StageConfig]:
    names = [*RECORD_STAGES, *GLOBAL_STAGES]
    return [StageConfig(name, {**RECORD_STAGES, **GLOBAL_STAGES}[name]()) for name in names]


@dataclass
class PipelineConfig:
    inputs: list[InputConfig] = field(default_factory=list)
    stages: list[StageConfig] = field(default_factory=_default_stages)
    output: OutputConfig = field(default_factory=OutputConfig)
    strict: bool = False  # stop at the first malformed record instead of counting it
    subject_salt: str = ""  # mixed into hash_subject(); the platform passes its own
    examples_per_reason: int = 3  # records quoted in the report per stage and reason
    chunk_bytes: int = 32 * 2**20  # uncompressed JSONL is split into units of this size

    def stage(self, name: str) -> StageConfig | None:
        return next((s for s in self.stages if s.name == name), None)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (the subset our configs use)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        return _convert(value, next(o for o in options if o is not type(None)), where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {
            _convert(k, key_type, f"{where}.{k}"): _convert(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)  # YAML/JSON map keys ({5: 0.15} written as "5")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where or 'config'}: expected a mapping of {_type_name(cls)} settings, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_join(where, unknown[0])}: unknown key; known keys: {', '.join(fields)}"
        )
    values = {}
    for name, spec in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], _join(where, name))
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing")
    return cls(**values)


def _stage_from(entry: Any, where: str) -> StageConfig:
    known = {**RECORD_STAGES, **GLOBAL_STAGES}
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        ((name, params),) = entry.items()
    else:
        raise ConfigError(
            f"{where}: a stage is a name or a one-key mapping {{name: {{settings}}}}, got {entry!r}"
        )
    if name not in known:
        raise ConfigError(f"{where}: unknown stage {name!r}; known stages: {', '.join(known)}")
    return StageConfig(name, from_dict(known[name], params, f"{where}.{name}"))


def _check_choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")


def validate(config: PipelineConfig) -> PipelineConfig:
    """Checks that span fields: stage order, choices, ranges."""
    for i, spec in enumerate(config.inputs):
        _check_choice(spec.format, INPUT_FORMATS, f"inputs[{i}].format")
        _check_choice(spec.text_unit, TEXT_UNITS, f"inputs[{i}].text_unit")
    _check_choice(config.output.compression, COMPRESSIONS, "output.compression")
    if config.output.shard_records < 1:
        raise ConfigError("output.shard_records: must be 1 or more")
    if config.chunk_bytes < 1 << 16:
        raise ConfigError("chunk_bytes: must be at least 65536")
    seen_global = None
    names = [s.name for s in config.stages]
    for i, stage in enumerate(config.stages):
        where = f"stages[{i}]"
        if stage.name in names[:i]:
            raise ConfigError(f"{where}: stage {stage.name!r} appears twice")
        if stage.name in GLOBAL_STAGES:
            seen_global = stage.name
        elif seen_global:
            raise ConfigError(
                f"{where}: {stage.name!r} comes after {seen_global!r}; dedup stages compare all "
                "records of the run, so they must come last"
            )
        params = stage.params
        if stage.name == "pii":
            for j, pii_type in enumerate(params.types):
                _check_choice(pii_type, PII_TYPES, f"{where}.pii.types[{j}]")
        if stage.name == "near_dedup":
            if min(params.bands, params.rows, params.ngram) < 1:
                raise ConfigError(f"{where}.near_dedup: bands, rows and ngram must be 1 or more")
            if not 0.0 <= params.min_similarity <= 1.0:
                raise ConfigError(f"{where}.near_dedup.min_similarity: must lie in [0, 1]")
    return config


def load_pipeline_config(path_or_dict: str | Path | dict) -> PipelineConfig:
    """Read a YAML or JSON file (or take a dict) and return a validated ``PipelineConfig``."""
    if isinstance(path_or_dict, dict):
        data = path_or_dict
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise ConfigError(f"pipeline config {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except (json.JSONDecodeError, ValueError) as error:
            raise ConfigError(f"{path}: not valid JSON/YAML: {error}") from None
        except Exception as error:  # yaml.YAMLError carries the line and column
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    data = dict(data or {})
    stages = data.pop("stages", None)
    config = from_dict(PipelineConfig, data)
    if stages is not None:
        if not isinstance(stages, list) or not stages:
            raise ConfigError(
                "stages: expected a non-empty list of stage names or {name: settings}"
            )
        config.stages = [_stage_from(entry, f"stages[{i}]") for i, entry in enumerate(stages)]
    return validate(config)


def config_to_dict(config: PipelineConfig) -> dict:
    """The inverse of ``load_pipeline_config``: what the report records as the config used."""
    data = dataclasses.asdict(config)
    data["stages"] = [{s.name: dataclasses.asdict(s.params)} for s in config.stages]
    return data


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.data.config defaults|validate`: the pipeline config as JSON.

    For callers that must not import the engine (the platform's web process): ``defaults``
    prints the default stages; ``validate`` reads a config object on stdin and prints
    ``{"ok": true, "config": {...}}`` (the normalised config) or ``{"ok": false, "error": "..."}``.
    """
    import sys

    command = (argv if argv is not None else sys.argv[1:])[:1]
    if command == ["defaults"]:
        print(json.dumps(config_to_dict(PipelineConfig())))
        return 0
    if command == ["validate"]:
        try:
            raw = json.loads(sys.stdin.read() or "{}")
            answer = {"ok": True, "config": config_to_dict(load_pipeline_config(raw))}
        except (ConfigError, ValueError) as error:
            answer = {"ok": False, "error": str(error)}
        print(json.dumps(answer))
        return 0
    print("usage: python -m engine.data.config defaults|validate", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
