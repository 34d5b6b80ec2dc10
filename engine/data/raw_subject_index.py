"""Subject index of a raw upload: keyed subject hash -> every (file, line) naming that person.

A pipeline output carries its subject index (engine.data.subject_index); a raw upload of a
dataset with a subject field gets the same kind of index when it is ingested, so that an
erasure finds a person in it by binary search instead of reading every record. Two files
sit beside the version's records:

    subject_index.npy   engine.data.subject_index's array (subject, shard, row), sorted by
                        subject: ``shard`` is the position in the manifest's ``files``,
                        ``row`` the 1-based line of that file
    subject_index.json  its manifest (RAW_INDEX_FORMAT): the subject field, the files
                        indexed (name, lines, sha256), ``subject_keyed`` and
                        ``subject_key_id`` (the key's fingerprint, never the key)

A record names the subject exactly when the ``field`` method of engine.data.erasure would
say so (``field_value``, the same pre-filter): the index and the streaming pass agree line
for line. The index is built in one streaming pass over lines (``RawIndexBuilder``), from
a file on disk or straight from an object store's stream (``open_lines``).
"""

from __future__ import annotations

import gzip
import io
import json
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engine.data.readers import _compression
from engine.data.subject_index import (
    INDEX_FILE,
    hash_subject,
    subject_key_id,
    write_subject_index,
)

RAW_INDEX_MANIFEST = "subject_index.json"
RAW_INDEX_FORMAT = "engine.raw_subject_index/1"
RAW_INDEX_FILES = (INDEX_FILE, RAW_INDEX_MANIFEST)


def field_value(line: bytes, subject_field: str) -> str | None:
    """The subject a JSONL line names in ``subject_field``, as engine.data.readers reads it:
    absent, null and "" name nobody; 42 is "42"."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    value = record.get(subject_field)
    return None if value is None or value == "" else str(value)


def may_name_someone(line: bytes, needle: bytes) -> bool:
    """Cheap pre-filter: a line without the field's key (even escaped) names nobody."""
    return needle in line or b"\\u" in line


def field_needle(subject_field: str) -> bytes:
    return json.dumps(subject_field, ensure_ascii=False).encode()


def open_lines(stream: BinaryIO, name: str) -> BinaryIO:
    """``stream`` (an object's bytes) decompressed as engine.data.readers.open_binary would
    decompress a file called ``name``, buffered so that it iterates by lines."""
    compression = _compression(Path(name))
    if compression == ".gz":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if compression == ".zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        return io.BufferedReader(raw, buffer_size=2**20)
    return io.BufferedReader(stream, buffer_size=2**20)


class RawIndexBuilder:
    """``add_lines`` once per JSONL file (in the order given), then ``write(folder)``."""

    def __init__(self, subject_field: str, key: bytes):
        if not subject_field:
            raise ValueError("a raw subject index needs the subject field")
        self.subject_field = subject_field
        self.key = key
        self.needle = field_needle(subject_field)
        self.files: list[dict] = []
        # Compact columns: a large upload has millions of records (the hashes are shared).
        self.subjects: list[bytes] = []
        self.shards = array("I")
        self.rows = array("I")
        # A subject has many records: each distinct id is hashed once.
        self._hashed: dict[str, bytes] = {}

    def add_lines(self, name: str, lines: Iterable[bytes], sha256: str = "") -> int:
        """Index one file's lines; returns how many lines it had."""
        position = len(self.files)
        count = 0
        for count, line in enumerate(lines, start=1):
            if not may_name_someone(line, self.needle):
                continue
            value = field_value(line, self.subject_field)
            if value is None:
                continue
            digest = self._hashed.get(value)
            if digest is None:
                digest = self._hashed[value] = bytes.fromhex(hash_subject(value, key=self.key))
            self.subjects.append(digest)
            self.shards.append(position)
            self.rows.append(count)
        self.files.append({"name": name, "lines": count, "sha256": sha256})
        return count

    def manifest(self) -> dict:
        return {
            "format": RAW_INDEX_FORMAT,
            "subject_field": self.subject_field,
            "subject_index": INDEX_FILE,
            "subject_keyed": True,
            "subject_key_id": subject_key_id(self.key),
            "unit": "line",
            "entries": len(self.subjects),
            "files": self.files,
        }

    def write(self, folder: str | Path) -> dict:
        """Write both files into ``folder``; returns the manifest."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_subject_index(folder / INDEX_FILE, self.subjects, self.shards, self.rows)
        manifest = self.manifest()
        write_manifest(folder, manifest)
        return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (folder / RAW_INDEX_MANIFEST).write_text(text, encoding="utf-8")


def load_raw_index(folder: str | Path) -> dict | None:
    """The raw index manifest of ``folder``, or None when it has none (or a file of that
    name that is not one: a user's own subject_index.json stays a data file)."""
    path = Path(folder) / RAW_INDEX_MANIFEST
    if not path.is_file() or not (Path(folder) / INDEX_FILE).is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != RAW_INDEX_FORMAT:
        return None
    return manifest


def find_in_raw_index(folder: str | Path, manifest: dict, hashes: Iterable[str]) -> dict:
    """{file name: sorted 1-based lines} of the subject hashes; no record is read."""
    entries = np.load(Path(folder) / manifest["subject_index"], mmap_mode="r")
    keys = entries["subject"]
    lines: dict[str, list[int]] = {f["name"]: [] for f in manifest["files"]}
    names = [f["name"] for f in manifest["files"]]
    for value in sorted(set(hashes)):
        wanted = bytes.fromhex(value)
        low = int(np.searchsorted(keys, wanted, side="left"))
        high = int(np.searchsorted(keys, wanted, side="right"))
        for entry in entries[low:high]:
            lines[names[int(entry["shard"])]].append(int(entry["row"]))
    return {name: sorted(found) for name, found in lines.items()}


def rewrite_raw_index(
    source: Path, target: Path, manifest: dict, removed: dict, sha256s: dict
) -> dict:
    """Write the index of ``source`` without the ``removed`` lines ({name: 1-based lines})
    into ``target``: later lines of an affected file move up; ``sha256s`` are the files'
    new hashes. Returns the new manifest; the key stays the one the index was built with
    (its generation, its fingerprint)."""
    from engine.data.erasure_files import rewrite_subject_index

    target.mkdir(parents=True, exist_ok=True)
    rewrite_subject_index(
        source / manifest["subject_index"],
        target / manifest["subject_index"],
        {"shards": manifest["files"]},
        removed,
    )
    files = []
    for entry in manifest["files"]:
        gone = len(removed.get(entry["name"], []))
        sha256 = sha256s.get(entry["name"], entry.get("sha256", ""))
        files.append({**entry, "lines": entry["lines"] - gone, "sha256": sha256})
    entries = len(np.load(target / manifest["subject_index"], mmap_mode="r"))
    new = {**manifest, "files": files, "entries": entries}
    write_manifest(target, new)
    return new
