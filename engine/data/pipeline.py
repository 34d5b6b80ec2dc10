"""Run a cleaning pipeline: read -> per-record stages -> global dedup -> JSONL shards + report.

    from engine.data.pipeline import run_pipeline
    from engine.data.config import load_pipeline_config

    report = run_pipeline(load_pipeline_config("pipeline.yaml"),
                          inputs=["data/raw"], output_dir="data/clean", processes=4)

Three phases, so the result does not depend on the number of processes:

1. *clean* (parallel over work units): each unit's records go through the per-record
   stages; survivors are written to ``.work/unit-N.jsonl`` with their content hash and
   MinHash band keys beside them. Every survivor is also measured for what cleaning left
   in it (toxicity, and PII on a sample: engine.data.residual); the report's ``residual``
   section therefore describes the records before the global dedup. Results are merged in
   unit order.
2. *dedup* (one process): exact and near duplicates over all units at once; the earliest
   record in input order survives.
3. *write* (one process, streaming): survivors are copied into ``records-00000.jsonl[.zst]``
   shards of ``shard_records`` rows, each written under a temporary name and renamed; then
   ``subject_index.npy``, ``report.json``/``report.txt`` and, last, ``manifest.json``.
   A folder without ``manifest.json`` is an unfinished run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.config import GLOBAL_STAGES, InputConfig, PipelineConfig, config_to_dict, validate
from engine.data.dedup import MinHasher, content_hash, exact_duplicates, near_duplicates
from engine.data.documents import Document
from engine.data.normalize import Normalizer
from engine.data.pii import PIIRedactor
from engine.data.quality import QualityFilter, RepetitionFilter
from engine.data.readers import InputError, InputProblem, WorkUnit, plan_units, read_unit
from engine.data.records import MANIFEST, RecordShardWriter, write_records_manifest
from engine.data.report import PipelineReport, ResidualStats, StageStats, snippet
from engine.data.residual import ResidualMeter, residual_toxicity_config
from engine.data.subject_index import (
    INDEX_FILE,
    hash_subject,
    parse_subject_key,
    subject_key_id,
    write_subject_index,
)
from engine.data.toxicity import ToxicityFilter

ProgressCallback = Callable[[str, int, int], None]
_STAGE_CLASSES = {
    "normalize": Normalizer,
    "quality": QualityFilter,
    "repetition": RepetitionFilter,
    "pii": PIIRedactor,
    "toxicity": ToxicityFilter,
}
_MAX_PROBLEM_EXAMPLES = 20


class PipelineError(Exception):
    """The run cannot produce a dataset; the message says what to fix."""


@dataclass
class UnitResult:
    index: int
    records_read: int = 0
    records_kept: int = 0
    problems: int = 0
    problem_examples: list[dict] = field(default_factory=list)
    stages: dict[str, StageStats] = field(default_factory=dict)
    residual: ResidualStats = field(default_factory=ResidualStats)


class _UnitCleaner:
    """Per-process state: the stages are built once, then reused for every unit."""

    def __init__(self, config: PipelineConfig, work_dir: Path):
        self.config = config
        self.work_dir = work_dir
        self.stages = [
            _STAGE_CLASSES[s.name](s.params) for s in config.stages if s.name in _STAGE_CLASSES
        ]
        toxicity = next((s for s in self.stages if isinstance(s, ToxicityFilter)), None)
        self.residual = ResidualMeter(config, toxicity)
        exact = config.stage("exact_dedup")
        near = config.stage("near_dedup")
        self.exact_casefold = exact.params.casefold if exact else None
        self.minhasher = MinHasher(near.params) if near else None
        self.keep_signatures = bool(near and near.params.min_similarity > 0)
        self.subject_key = parse_subject_key(config.subject_key) if config.subject_key else None

    def clean(self, unit_index: int, unit: WorkUnit) -> UnitResult:
        config = self.config
        spec = config.inputs[unit.input_index]
        result = UnitResult(unit_index, stages={s.name: StageStats() for s in config.stages})
        limit = config.examples_per_reason
        for stage in self.stages:
            if isinstance(stage, PIIRedactor):
                stage.counts.clear()
        hashes, signatures, locations, subjects = [], [], [], []
        stem = self.work_dir / f"unit-{unit_index:06d}"
        with open(f"{stem}.jsonl", "w", encoding="utf-8") as records:
            for item in read_unit(unit, spec):
                if isinstance(item, InputProblem):
                    self._count_problem(result, item)
                    continue
                result.records_read += 1
                if not self._run_stages(item, result, limit):
                    continue
                self.residual.measure(item, result.records_kept, result.residual)
                result.records_kept += 1
                records.write(_record_line(item, config.output.text_field))
                locations.append(item.location)
                subjects.append(
                    hash_subject(item.subject, config.subject_salt, key=self.subject_key)
                    if item.subject
                    else ""
                )
                if self.exact_casefold is not None:
                    hashes.append(content_hash(item.text, self.exact_casefold))
                if self.minhasher is not None:
                    signatures.append(self.minhasher.signature(item.text))
        for stage in self.stages:
            if isinstance(stage, PIIRedactor):
                result.stages[stage.name].counts.update(stage.counts)
        self._save_side_files(stem, hashes, signatures, locations, subjects)
        return result

    def _count_problem(self, result: UnitResult, problem: InputProblem) -> None:
        if self.config.strict:
            raise InputError(
                f"{problem.location}: {problem.problem} (strict: true stops at the first bad record)"
            )
        result.problems += 1
        if len(result.problem_examples) < _MAX_PROBLEM_EXAMPLES:
            result.problem_examples.append(
                {"location": problem.location, "problem": problem.problem}
            )

    def _run_stages(self, doc: Document, result: UnitResult, limit: int) -> bool:
        for stage in self.stages:
            before = doc.text
            reason = stage(doc)
            stats = result.stages[stage.name]
            if reason is not None:
                stats.removed[reason] += 1
                if stats.wants_example(reason, limit):  # snippets cost: make them only when kept
                    example = {"location": doc.location, "snippet": snippet(doc.text)}
                    stats.add_example(reason, example, limit)
                return False
            if doc.text is not before:
                stats.changed += 1
                if stats.wants_example("changed", limit):
                    example = {
                        "location": doc.location,
                        "snippet": _change_snippet(before, doc.text),
                    }
                    stats.add_example("changed", example, limit)
        if not doc.text.strip():
            result.stages.setdefault("pipeline", StageStats()).removed["empty_text"] += 1
            return False
        return True

    def _save_side_files(self, stem: Path, hashes, signatures, locations, subjects) -> None:
        if self.exact_casefold is not None:
            np.save(f"{stem}.exact.npy", np.array(hashes, dtype=np.uint64))
        if self.minhasher is not None:
            stacked = (
                np.stack(signatures)
                if signatures
                else np.zeros((0, self.minhasher.num_perm), np.uint32)
            )
            np.save(f"{stem}.bands.npy", self.minhasher.band_hashes(stacked))
            if self.keep_signatures:
                np.save(f"{stem}.signatures.npy", stacked)
        Path(f"{stem}.locations").write_text(
            "".join(f"{loc}\n" for loc in locations), encoding="utf-8"
        )
        Path(f"{stem}.subjects").write_text("".join(f"{s}\n" for s in subjects), encoding="ascii")


def _change_snippet(before: str, after: str) -> str:
    """Excerpt of the new text around the first character that changed."""
    first_difference = len(os.path.commonprefix([before, after]))
    return snippet(after, around=first_difference)


def _record_line(doc: Document, text_field: str) -> str:
    record = {text_field: doc.text}
    record.update((k, v) for k, v in doc.meta.items() if k != text_field)
    return json.dumps(record, ensure_ascii=False) + "\n"


# ---- process pool plumbing: one cleaner per worker process --------------------------------
_worker_cleaner: _UnitCleaner | None = None


def _init_worker(config: PipelineConfig, work_dir: Path) -> None:
    global _worker_cleaner
    _worker_cleaner = _UnitCleaner(config, work_dir)


def _clean_in_worker(task: tuple[int, WorkUnit]) -> UnitResult:
    return _worker_cleaner.clean(*task)


def _clean_all(config, units, work_dir, processes, progress) -> list[UnitResult]:
    tasks = list(enumerate(units))
    results: list[UnitResult] = []
    if processes <= 1 or len(units) == 1:
        cleaner = _UnitCleaner(config, work_dir)
        for task in tasks:
            results.append(cleaner.clean(*task))
            progress("clean", len(results), len(tasks))
        return results
    # spawn, not fork: a parent that already runs tokenizers or torch threads forks badly.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(processes, len(units)), _init_worker, (config, work_dir)) as pool:
        for result in pool.imap(_clean_in_worker, tasks):  # in unit order: deterministic merge
            results.append(result)
            progress("clean", len(results), len(tasks))
    return results


# ---- phase 2: global dedup ----------------------------------------------------------------
def _load_concatenated(work_dir: Path, n_units: int, suffix: str) -> np.ndarray:
    return np.concatenate(
        [np.load(work_dir / f"unit-{i:06d}.{suffix}.npy") for i in range(n_units)]
    )


def _line_at(path: Path, line_index: int) -> str:
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == line_index:
                return line.rstrip("\n")
    return ""


def _global_dedup(config, work_dir, results, report) -> np.ndarray:
    """removed[i] is True for record i (in unit order) that a dedup stage removed."""
    offsets = np.cumsum([0] + [r.records_kept for r in results])
    total = int(offsets[-1])
    removed = np.zeros(total, dtype=bool)

    def location(global_index: int) -> str:
        unit = int(np.searchsorted(offsets, global_index, side="right") - 1)
        return _line_at(work_dir / f"unit-{unit:06d}.locations", global_index - int(offsets[unit]))

    for stage in config.stages:
        if stage.name not in GLOBAL_STAGES or total == 0:
            continue
        if stage.name == "exact_dedup":
            duplicate_of = exact_duplicates(
                _load_concatenated(work_dir, len(results), "exact"), ~removed
            )
            reason = "duplicate"
        else:
            signatures = None
            if stage.params.min_similarity > 0:
                signatures = _load_concatenated(work_dir, len(results), "signatures")
            bands = _load_concatenated(work_dir, len(results), "bands")
            duplicate_of = near_duplicates(bands, ~removed, signatures, stage.params.min_similarity)
            reason = "near_duplicate"
        stats = report.stages[stage.name]
        hits = np.flatnonzero(duplicate_of >= 0)
        stats.removed[reason] += len(hits)
        for i in hits[: config.examples_per_reason].tolist():
            stats.add_example(
                reason,
                {"location": location(i), "duplicate_of": location(int(duplicate_of[i]))},
                config.examples_per_reason,
            )
        removed[hits] = True
    return removed


# ---- phase 3: output shards ---------------------------------------------------------------
def _write_outputs(
    config, output_dir, work_dir, results, removed, progress
) -> tuple[list[dict], int]:
    sink = RecordShardWriter(output_dir, config.output.shard_records, config.output.compression)
    subjects: list[bytes] = []
    subject_shards: list[int] = []
    subject_rows: list[int] = []
    global_index = 0
    for unit_index in range(len(results)):
        stem = work_dir / f"unit-{unit_index:06d}"
        with (
            open(f"{stem}.jsonl", "rb") as records,
            open(f"{stem}.subjects", encoding="ascii") as unit_subjects,
        ):
            for line, subject in zip(records, unit_subjects, strict=True):
                if not removed[global_index]:
                    shard, row = sink.write(line)
                    subject = subject.rstrip("\n")
                    if subject:
                        subjects.append(bytes.fromhex(subject))
                        subject_shards.append(shard)
                        subject_rows.append(row)
                global_index += 1
        progress("write", unit_index + 1, len(results))
    shards = sink.finish()
    if any(spec.subject_field for spec in config.inputs):
        write_subject_index(output_dir / INDEX_FILE, subjects, subject_shards, subject_rows)
    return shards, len(subjects)


# ---- entry point --------------------------------------------------------------------------
def _prepare_output_dir(output_dir: Path) -> Path:
    if (output_dir / MANIFEST).exists():
        raise PipelineError(
            f"{output_dir} already holds a finished run (manifest.json); choose a new output folder"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    # Leftovers of an interrupted run into the same folder: only our own file names.
    for pattern in ("records-*", "report.*", f"{INDEX_FILE}*"):
        for leftover in output_dir.glob(pattern):
            leftover.unlink()
    work_dir = output_dir / ".work"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir()
    return work_dir


def _as_inputs(
    inputs: Sequence[InputConfig | str | os.PathLike] | None, config: PipelineConfig
) -> list[InputConfig]:
    if inputs is None:
        return list(config.inputs)
    return [
        spec if isinstance(spec, InputConfig) else InputConfig(path=str(spec)) for spec in inputs
    ]


def run_pipeline(
    config: PipelineConfig,
    *,
    inputs: Sequence[InputConfig | str | os.PathLike] | None = None,
    output_dir: str | os.PathLike,
    processes: int = 1,
    progress: ProgressCallback | None = None,
) -> PipelineReport:
    """Clean ``inputs`` (default: ``config.inputs``) into ``output_dir``; see the module doc.

    Raises ``InputError`` (unreadable input, or a bad record with ``strict``) and
    ``PipelineError`` (nothing survived, output folder already used).
    """
    started = time.perf_counter()
    config = validate(PipelineConfig(**{**config.__dict__, "inputs": _as_inputs(inputs, config)}))
    if not config.inputs:
        raise PipelineError(
            "no inputs: list them under `inputs:` in the config or pass them on the command line"
        )
    progress = progress or (lambda stage, done, total: None)
    output_dir = Path(output_dir)
    units = plan_units(config.inputs, config.chunk_bytes)
    work_dir = _prepare_output_dir(output_dir)

    results = _clean_all(config, units, work_dir, max(1, processes), progress)
    report = _merge_results(config, units, results, processes)
    progress("dedup", 0, 1)
    removed = _global_dedup(config, work_dir, results, report)
    progress("dedup", 1, 1)
    report.records_written = int((~removed).sum())
    if report.records_read == 0:
        report.save(output_dir)
        raise PipelineError(
            f"the inputs hold no readable records ({report.input_problems} problems); see {output_dir / 'report.txt'}"
        )
    if report.records_written == 0:
        report.seconds = time.perf_counter() - started
        report.save(output_dir)
        raise PipelineError(
            f"no records survived the stages; see {output_dir / 'report.txt'} for what removed them and relax those settings"
        )
    report.shards, report.subjects_indexed = _write_outputs(
        config, output_dir, work_dir, results, removed, progress
    )
    report.seconds = time.perf_counter() - started
    report.save(output_dir)
    write_records_manifest(
        output_dir,
        records=report.records_written,
        text_field=config.output.text_field,
        compression=config.output.compression,
        shards=report.shards,
        subject_index=INDEX_FILE if (output_dir / INDEX_FILE).exists() else None,
        subject_salted=bool(config.subject_salt),
        **_subject_key_fields(config),
    )
    shutil.rmtree(work_dir)
    return report


def _subject_key_fields(config: PipelineConfig) -> dict:
    """What the manifest says of the key: that there is one and its fingerprint, so a
    lookup with another key is refused (SubjectIndex.load); never the key."""
    if not config.subject_key:
        return {"subject_keyed": False}
    return {
        "subject_keyed": True,
        "subject_key_id": subject_key_id(parse_subject_key(config.subject_key)),
    }


def _merge_results(config, units, results, processes) -> PipelineReport:
    stages = {s.name: StageStats() for s in config.stages}
    report = PipelineReport(stages=stages, processes=processes, config=config_to_dict(config))
    report.residual.toxicity_threshold = residual_toxicity_config(config).threshold
    report.input_files = len({u.path for u in units})
    report.input_bytes = sum(os.path.getsize(p) for p in {u.path for u in units})
    for result in results:
        report.records_read += result.records_read
        report.input_problems += result.problems
        for example in result.problem_examples:
            if len(report.problem_examples) < _MAX_PROBLEM_EXAMPLES:
                report.problem_examples.append(example)
        for name, stats in result.stages.items():
            report.stages.setdefault(name, StageStats()).merge(stats, config.examples_per_reason)
        report.residual.merge(result.residual)
    return report
