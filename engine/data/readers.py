"""Streaming readers: JSONL, plain text, Parquet, CSV; gzip and zstd inputs.

Inputs are cut into *work units* (a file, or a byte range of a large uncompressed JSONL
file, or nothing smaller than a file for compressed and columnar formats); each unit is
read as a stream of ``Document``s in constant memory, so a run can be spread over
processes and any input size fits. A record that cannot be read is yielded as an
``InputProblem`` naming file and line; the pipeline counts it and goes on (or stops when
``strict``). Problems with the *input as a whole* (missing file, unknown format, a text
field that no record has) raise ``InputError`` with what to fix.

A plain-text document is a whole file by default (``text_unit: file``), which must then
fit in memory; ``paragraph`` or ``line`` stream large text files.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.data.config import InputConfig
from engine.data.documents import Document

FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".parquet": "parquet",
    ".csv": "csv",
}
COMPRESSION_SUFFIXES = (".gz", ".zst")
_BLOCK = 8 * 2**20


class InputError(Exception):
    """The input cannot be read at all; the message says which path and what to change."""


@dataclass(frozen=True)
class InputProblem:
    """One record that could not be read (malformed JSON, undecodable bytes ...)."""

    location: str
    problem: str


@dataclass(frozen=True)
class WorkUnit:
    input_index: int  # which entry of the config's inputs
    path: str
    format: str
    start: int = 0  # byte range of an uncompressed JSONL file; end -1 = to the end
    end: int = -1
    lines_before: int = 0  # newlines before ``start``: line numbers in reports stay exact


def _compression(path: Path) -> str:
    return path.suffix if path.suffix in COMPRESSION_SUFFIXES else ""


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    stem_suffix = Path(path.stem).suffix if _compression(path) else path.suffix
    try:
        return FORMAT_BY_SUFFIX[stem_suffix.lower()]
    except KeyError:
        raise InputError(
            f"{path}: unknown format {stem_suffix or '(no extension)'!r}; name the file "
            f"{', '.join(FORMAT_BY_SUFFIX)} (optionally + .gz/.zst) or set `format:` on the input"
        ) from None


def _files(spec: InputConfig) -> list[Path]:
    root = Path(spec.path)
    if root.is_file():
        return [root]
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputError(f"{root}: the folder holds no files")
        return files
    raise InputError(f"{root}: no such file or folder; check the input path")


def plan_units(inputs: list[InputConfig], chunk_bytes: int) -> list[WorkUnit]:
    """Split the inputs into work units, in a fixed order that defines the output order."""
    units: list[WorkUnit] = []
    for index, spec in enumerate(inputs):
        for path in _files(spec):
            fmt = detect_format(path, spec.format)
            size = path.stat().st_size
            if fmt == "jsonl" and not _compression(path) and size > chunk_bytes:
                starts = range(0, size, chunk_bytes)
                lines_before = _newlines_before(path, starts)
                units.extend(
                    WorkUnit(index, str(path), fmt, start, min(start + chunk_bytes, size), lines)
                    for start, lines in zip(starts, lines_before, strict=True)
                )
            else:
                units.append(WorkUnit(index, str(path), fmt))
    if not units:
        raise InputError("no input files; give at least one input path")
    return units


def open_binary(path: Path) -> BinaryIO:
    compression = _compression(path)
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        import zstandard

        # A buffered stream, so that lines can be iterated; frames of a concatenated file
        # (what parallel compressors write) are read one after another.
        raw = zstandard.ZstdDecompressor().stream_reader(
            open(path, "rb"), read_across_frames=True, closefd=True
        )
        return io.BufferedReader(raw, buffer_size=2**20)
    return open(path, "rb")


def _stream_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zstandard.ZstdError)


def _newlines_before(path: Path, offsets: range) -> list[int]:
    """Newlines before each offset, in one pass over the file (bytes.count runs at GB/s)."""
    counts, total, position = [], 0, 0
    with open(path, "rb") as f:
        for offset in offsets:
            while position < offset:
                block = f.read(min(_BLOCK, offset - position))
                if not block:
                    break
                total += block.count(b"\n")
                position += len(block)
            counts.append(total)
    return counts


def _ranged_lines(unit: WorkUnit) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the lines that *start* inside the unit's byte range."""
    path = Path(unit.path)
    if unit.end < 0:
        with open_binary(path) as f:
            yield from enumerate(f, start=1)
        return
    with open(path, "rb") as f:
        line_number = unit.lines_before
        position = unit.start
        if unit.start > 0:
            f.seek(unit.start - 1)
            if f.read(1) != b"\n":  # we start mid-line: that line belongs to the previous unit
                skipped = f.readline()
                position += len(skipped)
                line_number += 1
        while position < unit.end:
            line = f.readline()
            if not line:
                break
            line_number += 1
            position += len(line)
            yield line_number, line


def _document(record: dict, spec: InputConfig, location: str) -> Document | InputProblem:
    text = record.get(spec.text_field)
    if not isinstance(text, str):
        return InputProblem(
            location, f"no string field {spec.text_field!r} (set `text_field:` on the input)"
        )
    meta = {k: v for k, v in record.items() if k != spec.text_field}
    subject = None
    if spec.subject_field:
        value = record.get(spec.subject_field)
        subject = None if value is None or value == "" else str(value)
    return Document(text, meta, location, subject)


def read_jsonl(unit: WorkUnit, spec: InputConfig) -> Iterator[Document | InputProblem]:
    for line_number, line in _ranged_lines(unit):
        if not line.strip():
            continue
        location = f"{unit.path}:{line_number}"
        try:
            record = json.loads(line)
        except UnicodeDecodeError as error:
            yield InputProblem(location, f"not UTF-8: {error.reason} at byte {error.start}")
            continue
        except json.JSONDecodeError as error:
            yield InputProblem(location, f"malformed JSON: {error.msg} (column {error.colno})")
            continue
        if not isinstance(record, dict):
            yield InputProblem(location, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield _document(record, spec, location)


def _decode(data: bytes, path: str, first_line: int) -> str | InputProblem:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        return InputProblem(
            f"{path}:{line}", f"not UTF-8 text ({error.reason} at byte {error.start}); file skipped"
        )


def read_text(unit: WorkUnit, spec: InputConfig) -> Iterator[Document | InputProblem]:
    path = unit.path
    with open_binary(Path(path)) as f:
        if spec.text_unit == "file":
            text = _decode(f.read(), path, 1)
            yield (
                text
                if isinstance(text, InputProblem)
                else Document(text, {"source": path}, f"{path}:1")
            )
            return
        buffer: list[str] = []
        start_line = 0
        for line_number, raw in enumerate(f, start=1):
            line = _decode(raw, path, line_number)
            if isinstance(line, InputProblem):
                yield line
                return
            if spec.text_unit == "line":
                if line.strip():
                    yield Document(line.rstrip("\n"), {"source": path}, f"{path}:{line_number}")
                continue
            if line.strip():
                if not buffer:
                    start_line = line_number
                buffer.append(line)
            elif buffer:
                yield Document(
                    "".join(buffer).rstrip("\n"), {"source": path}, f"{path}:{start_line}"
                )
                buffer = []
        if buffer:
            yield Document("".join(buffer).rstrip("\n"), {"source": path}, f"{path}:{start_line}")


def read_csv(unit: WorkUnit, spec: InputConfig) -> Iterator[Document | InputProblem]:
    csv.field_size_limit(sys.maxsize)  # a document is one field and can be long
    with open_binary(Path(unit.path)) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        if reader.fieldnames is not None and spec.text_field not in reader.fieldnames:
            raise InputError(
                f"{unit.path}: no column {spec.text_field!r} (columns: {', '.join(reader.fieldnames)}); "
                "set `text_field:` on the input"
            )
        for row in reader:
            yield _document(row, spec, f"{unit.path}:{reader.line_num}")


def read_parquet(unit: WorkUnit, spec: InputConfig) -> Iterator[Document | InputProblem]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(unit.path)
    if spec.text_field not in parquet.schema_arrow.names:
        raise InputError(
            f"{unit.path}: no column {spec.text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
            "set `text_field:` on the input"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):  # one batch in memory at a time
        for record in batch.to_pylist():
            yield _document(record, spec, f"{unit.path}#row{row}")
            row += 1


READERS = {"jsonl": read_jsonl, "text": read_text, "csv": read_csv, "parquet": read_parquet}


def read_unit(unit: WorkUnit, spec: InputConfig) -> Iterator[Document | InputProblem]:
    """Documents of one work unit; a broken compressed stream ends the unit with a problem."""
    count = 0
    try:
        for item in READERS[unit.format](unit, spec):
            count += 1
            yield item
    except UnicodeDecodeError as error:
        yield InputProblem(
            f"{unit.path}:{count + 1}", f"not UTF-8 ({error.reason}); rest of file skipped"
        )
    except _stream_errors() as error:
        yield InputProblem(f"{unit.path}", f"cannot read the file ({error}); rest of file skipped")
