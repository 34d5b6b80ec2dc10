"""The account of a pipeline run: every removed or changed record, per stage and reason.

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

from engine.data.pii import PIIConfig, PIIRedactor

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

    def to_dict(self) -> dict:
        return {
            "records_read": self.records_read,
            "records_written": self.records_written,
            "input": {"files": self.input_files, "bytes": self.input_bytes},
            "input_problems": {"count": self.input_problems, "examples": self.problem_examples},
            "stages": {name: stats.to_dict() for name, stats in self.stages.items()},
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
