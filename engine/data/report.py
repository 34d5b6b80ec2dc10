"""The account of a pipeline run: every removed or changed record, per stage and reason,
and what is left after cleaning (toxic share, PII found in a sample; see engine.data.residual).

``report.json`` is for machines (the platform shows it and puts it in the audit trail);
``report.txt`` is the same in a dozen lines for people. Example snippets are passed
through the PII redactor before they are stored, so the report never carries the personal
data the pipeline removed from the records.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.pii import PII_TYPES, PIIConfig, PIIRedactor

SNIPPET_CHARS = 160
_SNIPPET_REDACTOR = PIIRedactor(PIIConfig())


def snippet(text: str, around: int = 0) -> str:
    """A short, PII-free, one-line excerpt of ``text`` starting a little before ``around``."""
    start = max(0, around - SNIPPET_CHARS // 4)
    excerpt, _ = _SNIPPET_REDACTOR.redact(text[start : start + 2 * SNIPPET_CHARS])
    excerpt = " ".join(excerpt.split())
    return ("…" if start else "") + excerpt[:SNIPPET_CHARS]


@dataclass
class StageStats:
    removed: Counter = field(default_factory=Counter)  # reason -> records
    changed: int = 0  # records whose text the stage rewrote
    counts: Counter = field(default_factory=Counter)  # e.g. PII type -> spans replaced
    examples: dict[str, list[dict]] = field(default_factory=dict)  # reason -> [{location, snippet}]

    def wants_example(self, reason: str, limit: int) -> bool:
        return len(self.examples.get(reason, ())) < limit

    def add_example(self, reason: str, example: dict, limit: int) -> None:
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < limit:
            bucket.append(example)

    def merge(self, other: StageStats, limit: int) -> None:
        self.removed.update(other.removed)
        self.changed += other.changed
        self.counts.update(other.counts)
        for reason, examples in other.examples.items():
            for example in examples:
                self.add_example(reason, example, limit)

    def to_dict(self) -> dict:
        return {
            "removed": dict(sorted(self.removed.items())),
            "removed_total": sum(self.removed.values()),
            "changed": self.changed,
            "counts": dict(sorted(self.counts.items())),
            "examples": self.examples,
        }


@dataclass
class ResidualStats:
    """Toxicity and PII in the records that survived the per-record stages (before dedup)."""

    toxicity_threshold: float = 0.0  # the rule the count used: score above this is toxic
    records_checked: int = 0  # every survivor is scored for toxicity
    toxic_records: int = 0
    pii_sampled_records: int = 0  # PII detection runs on a deterministic sample only
    pii_found: Counter = field(default_factory=Counter)  # PII type -> spans found

    def merge(self, other: ResidualStats) -> None:
        self.records_checked += other.records_checked
        self.toxic_records += other.toxic_records
        self.pii_sampled_records += other.pii_sampled_records
        self.pii_found.update(other.pii_found)

    @property
    def toxic_share(self) -> float:
        return self.toxic_records / self.records_checked if self.records_checked else 0.0

    @property
    def pii_found_total(self) -> int:
        return sum(self.pii_found.values())

    def to_dict(self) -> dict:
        sampled = self.pii_sampled_records
        return {
            "records_checked": self.records_checked,
            "toxic_records": self.toxic_records,
            "toxic_share": round(self.toxic_share, 6),
            "toxicity_threshold": self.toxicity_threshold,
            "pii_sampled_records": sampled,
            "pii_found": {t: self.pii_found.get(t, 0) for t in PII_TYPES},  # zeros too
            "pii_found_total": self.pii_found_total,
            "pii_per_1k_records": round(1000 * self.pii_found_total / sampled, 3)
            if sampled
            else 0.0,
        }


@dataclass
class PipelineReport:
    stages: dict[str, StageStats]  # in pipeline order
    records_read: int = 0
    records_written: int = 0
    input_files: int = 0
    input_bytes: int = 0
    input_problems: int = 0
    problem_examples: list[dict] = field(default_factory=list)  # [{location, problem}]
    shards: list[dict] = field(default_factory=list)
    subjects_indexed: int = 0
    processes: int = 1
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    residual: ResidualStats = field(default_factory=ResidualStats)

    def to_dict(self) -> dict:
        return {
            "records_read": self.records_read,
            "records_written": self.records_written,
            "input": {"files": self.input_files, "bytes": self.input_bytes},
            "input_problems": {"count": self.input_problems, "examples": self.problem_examples},
            "stages": {name: stats.to_dict() for name, stats in self.stages.items()},
            "residual": self.residual.to_dict(),
            "output": {"shards": self.shards, "subjects_indexed": self.subjects_indexed},
            "run": {"processes": self.processes, "seconds": round(self.seconds, 3)},
            "config": self.config,
        }

    def summary(self) -> str:
        lines = [
            f"read {self.records_read} records from {self.input_files} files "
            f"({self.input_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s with {self.processes} process(es)",
        ]
        if self.input_problems:
            first = self.problem_examples[0]
            lines.append(
                f"input problems: {self.input_problems} records skipped, "
                f"first at {first['location']}: {first['problem']}"
            )
        for name, stats in self.stages.items():
            parts = [f"removed {sum(stats.removed.values())}"]
            if stats.removed:
                parts[0] += (
                    " (" + ", ".join(f"{r} {n}" for r, n in stats.removed.most_common()) + ")"
                )
            if stats.changed:
                parts.append(f"changed {stats.changed}")
            if stats.counts:
                parts.append(", ".join(f"{k} {v}" for k, v in sorted(stats.counts.items())))
            lines.append(f"  {name:<12} " + "; ".join(parts))
        lines.append(
            f"after cleaning: toxic share {100 * self.residual.toxic_share:.2f}%, PII found "
            f"{self.residual.pii_found_total} in {self.residual.pii_sampled_records} sampled records"
        )
        lines.append(
            f"wrote {self.records_written} records in {len(self.shards)} shard(s)"
            + (f"; subject index: {self.subjects_indexed} rows" if self.subjects_indexed else "")
        )
        return "\n".join(lines) + "\n"

    def save(self, output_dir: Path) -> None:
        _atomic_write(
            output_dir / "report.json", json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        )
        _atomic_write(output_dir / "report.txt", self.summary())


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
