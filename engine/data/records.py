"""Cleaned-record shards: the pipeline's output format (``engine.records/1``).

    records-00000.jsonl[.zst]   one JSON object a line: the text plus every input field
    subject_index.npy           optional, see engine.data.subject_index
    report.json, report.txt     what the run removed and changed, see engine.data.report
    manifest.json               written last; a folder without it is an unfinished run

``manifest.json``::

    {"format": "engine.records/1", "records": N, "text_field": "text", "compression": "none",
     "shards": [{"name": "records-00000.jsonl", "records": n, "bytes": b, "sha256": "..."}],
     "subject_index": "subject_index.npy" | null, "subject_salted": false,
     "subject_keyed": true, "subject_key_id": "1a2b3c4d", "report": "report.json"}

``subject_key_id`` (only when keyed) is the fingerprint of the HMAC key the subject index
was built with (engine.data.subject_index.subject_key_id), never the key.

Reading: ``for record in read_records("data/clean"): ...`` (checks each shard's sha256).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "manifest.json"
RECORDS_FORMAT = "engine.records/1"


class RecordShardWriter:
    """Rolls records into numbered shards; each appears under its final name only when whole."""

    def __init__(self, output_dir: Path, shard_records: int, compression: str):
        self.output_dir = output_dir
        self.shard_records = shard_records
        self.compression = compression
        self.shards: list[dict] = []
        self._file = None
        self._rows = 0

    def _open(self) -> None:
        suffix = ".jsonl.zst" if self.compression == "zstd" else ".jsonl"
        self._name = f"records-{len(self.shards):05d}{suffix}"
        self._temporary = self.output_dir / f"{self._name}.tmp"
        raw = open(self._temporary, "wb")
        if self.compression == "zstd":
            import zstandard

            self._file = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
        else:
            self._file = raw
        self._rows = 0

    def write(self, line: bytes) -> tuple[int, int]:
        """Append one record; returns its (shard position, row)."""
        if self._file is None:
            self._open()
        self._file.write(line)
        position = (len(self.shards), self._rows)
        self._rows += 1
        if self._rows == self.shard_records:
            self._close()
        return position

    def _close(self) -> None:
        self._file.close()
        self._file = None
        final = self.output_dir / self._name
        os.replace(self._temporary, final)
        self.shards.append(
            {
                "name": self._name,
                "records": self._rows,
                "bytes": final.stat().st_size,
                "sha256": sha256_of(final),
            }
        )

    def finish(self) -> list[dict]:
        if self._file is not None:
            self._close()
        return self.shards


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def write_records_manifest(output_dir: Path, *, shards: list[dict], **fields) -> None:
    """Write ``manifest.json`` under a temporary name and rename it: the last step of a run."""
    manifest = {"format": RECORDS_FORMAT, **fields, "shards": shards, "report": "report.json"}
    temporary = output_dir / f"{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(temporary, output_dir / MANIFEST)


def load_records_manifest(output_dir: str | os.PathLike) -> dict:
    """The manifest of a finished pipeline output; ``ValueError`` naming what is wrong."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{output_dir} has no {MANIFEST}: not a finished pipeline output")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != RECORDS_FORMAT:
        raise ValueError(
            f"{path} has format {manifest.get('format')!r}, expected {RECORDS_FORMAT!r}"
        )
    return manifest


def read_records(output_dir: str | os.PathLike, *, verify_checksums: bool = True) -> Iterator[dict]:
    """Every record of a pipeline output, in order (shard by shard, row by row)."""
    output_dir = Path(output_dir)
    for shard in load_records_manifest(output_dir)["shards"]:
        path = output_dir / shard["name"]
        if verify_checksums and sha256_of(path) != shard["sha256"]:
            raise ValueError(f"{path} is corrupt: its sha256 does not match the manifest")
        with open(path, "rb") as raw:
            stream = raw
            if path.suffix == ".zst":
                import zstandard

                stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
            for line in stream:
                yield json.loads(line)
