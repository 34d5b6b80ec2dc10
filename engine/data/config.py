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

``load_pipeline_config(path_or_dict)`` returns a ``PipelineConfig``. The dataclasses are
built by engine/configfile.py like every other engine config, so a bad key raises
``ConfigError("unknown key 'stages[1].quality.min_wrds' (did you mean
'stages[1].quality.min_words'?)")``; stage names get the same "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.configfile import build, read_config, setting
from engine.data.dedup import ExactDedupConfig, NearDedupConfig
from engine.data.normalize import NormalizeConfig
from engine.data.pii import PHONE_LENIENCIES, PHONE_REGIONS, PII_TYPES, PIIConfig
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
    # JSONL/CSV/Parquet field that holds the document.
    text_field: str = setting("text", minLength=1, help="the record field holding the text")
    subject_field: str = ""  # field naming the data subject (person); enables the subject index
    text_unit: str = "file"  # plain text: one document per file, per paragraph or per line


@dataclass
class OutputConfig:
    path: str = ""  # output folder; `--output` on the command line overrides it
    shard_records: int = 50_000  # records per output JSONL shard
    compression: str = "none"  # "zstd": records-00000.jsonl.zst
    text_field: str = "text"  # name of the cleaned text in the output records


@dataclass
class TokenizeConfig:
    """After cleaning: the tokenizer trained on the records and the token shards cut from them
    (engine.data.tokenizers, engine.data.packing)."""

    kind: Literal["char", "bpe"] = setting("char", help="characters, or byte-level BPE")
    vocab_size: int = setting(4096, minimum=260, maximum=65535, help="BPE only")
    val_fraction: float = setting(
        0.05, minimum=0.001, maximum=0.5, help="share of documents held out for validation"
    )


def tokenize_config(raw: dict[str, Any]) -> TokenizeConfig:
    """The tokenizer and shard settings from a mapping, checked like every config."""
    return build(TokenizeConfig, raw, ConfigError, "tokenize.")


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
    # Hex HMAC key of the subject index (engine.data.subject_index). The platform passes its
    # project's key with each job; it is never written to the report or the manifest.
    subject_key: str = ""
    subject_salt: str = ""  # before keys: mixed into a plain sha256; kept for old configs
    examples_per_reason: int = 3  # records quoted in the report per stage and reason
    chunk_bytes: int = 32 * 2**20  # uncompressed JSONL is split into units of this size

    def stage(self, name: str) -> StageConfig | None:
        return next((s for s in self.stages if s.name == name), None)


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
        close = difflib.get_close_matches(str(name), list(known), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known stages: {', '.join(known)}"
        raise ConfigError(f"{where}: unknown stage {name!r} ({hint})")
    return StageConfig(name, build(known[name], params or {}, ConfigError, f"{where}.{name}."))


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
    if config.subject_key:
        from engine.data.subject_index import SubjectKeyError, parse_subject_key

        if config.subject_salt:
            raise ConfigError("subject_salt: leave it out with subject_key (the key replaces it)")
        try:
            parse_subject_key(config.subject_key)
        except SubjectKeyError as error:
            raise ConfigError(f"subject_key: {error}") from None
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
            for j, region in enumerate(params.regions):
                if region not in PHONE_REGIONS:
                    raise ConfigError(
                        f"{where}.pii.regions[{j}]: {region!r} is not a region code "
                        "(ISO 3166 alpha-2, e.g. US, GB, DE)"
                    )
            _check_choice(params.phone_leniency, PHONE_LENIENCIES, f"{where}.pii.phone_leniency")
        if stage.name == "near_dedup":
            if min(params.bands, params.rows, params.ngram) < 1:
                raise ConfigError(f"{where}.near_dedup: bands, rows and ngram must be 1 or more")
            if not 0.0 <= params.min_similarity <= 1.0:
                raise ConfigError(f"{where}.near_dedup.min_similarity: must lie in [0, 1]")
    return config


def load_pipeline_config(path_or_dict: str | Path | dict) -> PipelineConfig:
    """Read a YAML or JSON file (or take a dict) and return a validated ``PipelineConfig``."""
    if isinstance(path_or_dict, dict):
        data = dict(path_or_dict)
    else:
        if not Path(path_or_dict).is_file():
            raise ConfigError(f"pipeline config {path_or_dict} does not exist")
        data, _ = read_config(path_or_dict, None, ConfigError)  # YAML reads JSON too
    stages = data.pop("stages", None)
    config = build(PipelineConfig, data, ConfigError)
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
    # The key is a secret: the report (and the platform, which stores the normalised
    # config) must never hold it. Whether a run was keyed is in the manifest.
    data.pop("subject_key")
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
