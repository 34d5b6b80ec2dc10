"""File-level steps of an erasure (engine.data.erasure): copy a file without some of its
lines in the same compression, reuse an unchanged file, shift the subject index's rows,
strip a report's quotes, and locate erased documents in token shards.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engine.data.packing import is_validation
from engine.data.readers import open_binary
from engine.data.shards import load_manifest
from engine.data.subject_index import INDEX_DTYPE

TOKENS_DIR = "tokens"


def fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def reuse_file(source: Path, target: Path) -> None:
    """An unchanged file: a hard link where the file system allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@contextmanager
def _writer(path: Path) -> Iterator[BinaryIO]:
    """A file with ``path``'s compression, on disk (fsync) when the block ends."""
    with open(path, "wb") as raw:
        if path.suffix == ".gz":
            # mtime 0 and no name in the header: the same records give the same bytes
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
            ) as sink:
                yield sink
        elif path.suffix == ".zst":
            import zstandard

            with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as sink:
                yield sink
        else:
            yield raw
        raw.flush()
        os.fsync(raw.fileno())


def copy_without_lines(source: Path, target: Path, drop: set[int], first: int) -> int:
    """Copy ``source``'s lines to ``target`` (same compression) except the numbered ones."""
    kept = 0
    with open_binary(source) as stream, _writer(target) as sink:
        for number, line in enumerate(stream, start=first):
            if number not in drop:
                sink.write(line)
                kept += 1
    return kept


def rewrite_subject_index(source: Path, target: Path, manifest: dict, removed: dict) -> None:
    """Drop the erased rows; later rows of the same shard move up by the rows erased before."""
    entries = np.load(source)
    keep = np.ones(len(entries), dtype=bool)
    shifted = entries["row"].astype(np.int64)
    for position, shard in enumerate(manifest["shards"]):
        rows = np.asarray(removed.get(shard["name"], []), dtype=np.int64)
        if not rows.size:
            continue
        in_shard = entries["shard"] == position
        keep &= ~(in_shard & np.isin(entries["row"], rows))
        shifted[in_shard] -= np.searchsorted(rows, shifted[in_shard], side="left")
    kept = np.empty(int(keep.sum()), dtype=INDEX_DTYPE)
    kept["subject"] = entries["subject"][keep]
    kept["shard"] = entries["shard"][keep]
    kept["row"] = shifted[keep]
    with open(target, "wb") as handle:
        np.save(handle, kept)


def _without_examples(value):
    if isinstance(value, dict):
        return {
            k: ([] if k in ("examples", "problem_examples") else _without_examples(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_examples(v) for v in value]
    return value


def rewrite_report(source: Path, target: Path) -> None:
    report = _without_examples(json.loads(source.read_text(encoding="utf-8")))
    report["examples_removed_by_erasure"] = True
    target.write_text(json.dumps(report, indent=2), encoding="utf-8")


def token_shard_impact(folder: Path, manifest: dict, removed: dict) -> dict:
    """Which token shards held an erased document: its split's shard and every later one.

    A document's split is a hash of its text (packing.is_validation) and its place in the
    split's stream is its ordinal among that split's documents, each preceded by
    end-of-text; so counting end-of-text tokens per shard locates it without decoding."""
    tokens = load_manifest(folder / TOKENS_DIR)
    every = [s.path for s in tokens.shards]
    val_fraction = float(tokens.metadata.get("val_fraction", 0.0))
    text_field = manifest.get("text_field", "text")
    first: dict[str, int] = {}  # split -> ordinal of its first erased document
    ordinals = {"train": 0, "val": 0}
    pending = {name for name, rows in removed.items() if rows}
    for shard in manifest["shards"]:
        if not pending:
            break
        rows = set(removed.get(shard["name"], []))
        with open_binary(folder / shard["name"]) as stream:
            for row, line in enumerate(stream):
                text = json.loads(line).get(text_field, "")
                split = "val" if is_validation(text, val_fraction) else "train"
                if row in rows:
                    first.setdefault(split, ordinals[split])
                ordinals[split] += 1
        pending.discard(shard["name"])
    affected: list[str] = []
    for split, ordinal in first.items():
        shards = tokens.shards_for(split)
        counts = [
            int(
                np.count_nonzero(
                    np.memmap(tokens.root / s.path, dtype=s.dtype, mode="r") == tokens.eot_id
                )
            )
            if s.num_tokens
            else 0
            for s in shards
        ]
        documents = tokens.splits.get(split, {}).get("num_documents")
        start = 0
        if documents == sum(counts):  # else an end-of-text inside a text: assume all shards
            start = int(np.searchsorted(np.cumsum(counts), ordinal, side="right"))
        affected += [s.path for s in shards[start:]]
    return {
        "affected": [p for p in every if p in affected],
        "unchanged": [p for p in every if p not in affected],
        "note": "unchanged shards stay valid only if the tokenizer is kept",
    }
