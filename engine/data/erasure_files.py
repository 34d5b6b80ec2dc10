"""File-level steps of an erasure (engine.data.erasure): copy a file without some of its
lines in the same compression, reuse an unchanged file, shift the subject index's rows,
strip a report's quotes, and locate erased documents in token shards (engine.data.token_cut
cuts them out).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from json.decoder import scanstring
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engine.data.packing import is_validation
from engine.data.readers import open_binary
from engine.data.shards import ShardManifest
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


def record_text_reader(text_field: str):
    """A record line's text as json.loads(line)[text_field] gives it, ~5x faster.

    The fast path takes the one ``"<field>": "`` of a line with no nested object (so the
    key is the record's own; inside a string every quote is escaped) and decodes the
    string with json's C scanner; any other line is parsed whole. A wrong text would put
    a document in the wrong split: the cut checks each erased span against the encoded
    text, and refuses when one differs."""
    needle = json.dumps(text_field) + ': "'

    def text_of(line: bytes) -> str:
        decoded = line.decode("utf-8")
        if decoded.count("{") == 1 and decoded.count(needle) == 1:
            return scanstring(decoded, decoded.index(needle) + len(needle))[0]
        try:
            value = json.loads(decoded).get(text_field, "")
        except (ValueError, AttributeError):
            # not a record the tokenizer read either: the counts then refuse the cut
            return ""
        return value if isinstance(value, str) else ""

    return text_of


def erased_documents(
    folder: Path, manifest: dict, removed: dict, val_fraction: float
) -> dict[str, list[tuple[int, str]]]:
    """{split: [(ordinal, text)]} of the erased records among their split's documents.

    A document's split is a hash of its text (packing.is_validation) and its place in the
    split's stream is its ordinal among that split's documents (records are tokenized in
    manifest order, one document each), so the records before the last erased one are
    read, nothing after it (only the erased ones when everything is in train)."""
    text_of = record_text_reader(manifest.get("text_field", "text"))
    found: dict[str, list[tuple[int, str]]] = {"train": [], "val": []}
    ordinals = {"train": 0, "val": 0}
    pending = {name for name, rows in removed.items() if rows}
    for shard in manifest["shards"]:
        if not pending:
            break
        rows = set(removed.get(shard["name"], []))
        if val_fraction <= 0 and not rows:  # one split: the ordinal is the record's number
            ordinals["train"] += shard["records"]
            continue
        with open_binary(folder / shard["name"]) as stream:
            for row, line in enumerate(stream):
                if val_fraction <= 0:
                    if row in rows:
                        found["train"].append((ordinals["train"] + row, text_of(line)))
                    continue
                text = text_of(line)
                split = "val" if is_validation(text, val_fraction) else "train"
                if row in rows:
                    found[split].append((ordinals[split], text))
                ordinals[split] += 1
        if val_fraction <= 0:
            ordinals["train"] += shard["records"]
        pending.discard(shard["name"])
    return found


def token_shard_impact(tokens: ShardManifest, ordinals: dict, counts: dict | None) -> dict:
    """Which token shards held an erased document: its split's shard and every later one
    (the stream shifts); all of them when ``counts`` (end-of-text per shard) are unknown
    or do not match the documents."""
    affected: list[str] = []
    for split, found in ordinals.items():
        if not found:
            continue
        shards = tokens.shards_for(split)
        start = 0
        documents = tokens.splits.get(split, {}).get("num_documents")
        if counts is not None and documents == sum(counts[split]):
            start = int(np.searchsorted(np.cumsum(counts[split]), min(found), side="right"))
        affected += [s.path for s in shards[start:]]
    every = [s.path for s in tokens.shards]
    return {
        "affected": [p for p in every if p in affected],
        "unchanged": [p for p in every if p not in affected],
        "note": "unchanged shards stay valid only if the tokenizer is kept",
    }
