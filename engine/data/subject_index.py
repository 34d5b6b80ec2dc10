"""Subject index: hashed data-subject id -> every (output shard, row) holding that person.

Built at ingestion so that a GDPR erasure finds a person's records with one binary search
instead of a scan of the dataset. The file ``subject_index.npy`` is a numpy structured
array sorted by subject hash::

    subject  32 raw bytes  sha256 (see hash_subject)
    shard    uint32        position in the output manifest's "shards" list
    row      uint32        0-based line within that shard

It is memory-mapped on load; looking a subject up touches O(log n) pages. Subject ids
never appear in it, only their hashes, so the index itself holds no personal data beyond
what the shards hold.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

INDEX_FILE = "subject_index.npy"
INDEX_DTYPE = np.dtype([("subject", "S32"), ("shard", "<u4"), ("row", "<u4")])


def hash_subject(subject_id: str, salt: str = "") -> str:
    """Hex sha256 of ``salt + subject_id`` (UTF-8): the one way subject ids are hashed."""
    return hashlib.sha256((salt + subject_id).encode("utf-8")).hexdigest()


def write_subject_index(
    path: Path, subjects: list[bytes], shards: list[int], rows: list[int]
) -> Path:
    """Sort by subject and write atomically (temporary name, then rename)."""
    index = np.empty(len(subjects), dtype=INDEX_DTYPE)
    index["subject"] = subjects
    index["shard"] = shards
    index["row"] = rows
    index = index[np.argsort(index["subject"], kind="stable")]
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        np.save(f, index)
    os.replace(temporary, path)
    return path


class SubjectIndex:
    """Read side: ``SubjectIndex.load(output_dir).lookup("user-42")`` -> [(shard name, row)]."""

    def __init__(self, entries: np.ndarray, shard_names: list[str], salt: str = ""):
        self.entries = entries
        self.shard_names = shard_names
        self.salt = salt

    @classmethod
    def load(cls, output_dir: str | Path, salt: str = "") -> SubjectIndex:
        output_dir = Path(output_dir)
        manifest_path = output_dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{output_dir} has no manifest.json: not a finished pipeline output"
            )
        manifest = json.loads(manifest_path.read_text())
        index_path = output_dir / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{output_dir} has no subject index: no input declared `subject_field`"
            )
        entries = np.load(index_path, mmap_mode="r")
        return cls(entries, [s["name"] for s in manifest["shards"]], salt)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup_hash(self, subject_hash: str) -> list[tuple[str, int]]:
        key = bytes.fromhex(subject_hash)
        keys = self.entries["subject"]
        low = int(np.searchsorted(keys, key, side="left"))
        high = int(np.searchsorted(keys, key, side="right"))
        found = self.entries[low:high]
        return [(self.shard_names[int(e["shard"])], int(e["row"])) for e in found]

    def lookup(self, subject_id: str) -> list[tuple[str, int]]:
        return self.lookup_hash(hash_subject(subject_id, self.salt))
