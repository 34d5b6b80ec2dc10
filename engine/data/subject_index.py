"""Subject index: hashed data-subject id -> every (output shard, row) holding that person.

Built at ingestion so that a GDPR erasure finds a person's records with one binary search
instead of a scan of the dataset. The file ``subject_index.npy`` is a numpy structured
array sorted by subject hash::

    subject  32 raw bytes  the subject's hash (see hash_subject)
    shard    uint32        position in the output manifest's "shards" list
    row      uint32        0-based line within that shard

It is memory-mapped on load; looking a subject up touches O(log n) pages. Subject ids
never appear in it, only their hashes, so the index itself holds no personal data beyond
what the shards hold.

Keyed hashes: a plain sha256 of an e-mail address is reversed by hashing guesses, so the
platform gives each project a secret key and the index holds HMAC-SHA256(key, id). The
manifest records ``subject_keyed: true`` and ``subject_key_id`` (a fingerprint of the
key, never the key), and ``SubjectIndex.load`` refuses a key with another fingerprint:
a lookup with the wrong key would otherwise answer "no records" for everyone. Indexes
built before keys (plain, optionally salted sha256) load and look up as before, without
a key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import numpy as np

INDEX_FILE = "subject_index.npy"
INDEX_DTYPE = np.dtype([("subject", "S32"), ("shard", "<u4"), ("row", "<u4")])
# Shorter keys make the HMAC no stronger than guessing the key; the platform's are 32 bytes.
MIN_KEY_BYTES = 16


class SubjectKeyError(ValueError):
    """The key given does not fit the index (missing, wrong, or not hex)."""


def normalise_subject(subject_id: str) -> str:
    """What a keyed hash covers: "Ann@Example.com " and "ann@example.com" are one subject."""
    return subject_id.strip().casefold()


def hash_subject(subject_id: str, salt: str = "", *, key: bytes | None = None) -> str:
    """The one way subject ids are hashed, as hex.

    With ``key``: HMAC-SHA256(key, normalised id), byte for byte what the serving archive
    and the platform compute (workers.serve.protocol.subject_hash with the key as hex).
    Without: sha256 of ``salt + subject_id`` as written, which is how indexes were built
    before keys; kept so that they stay readable.
    """
    if key is not None:
        return hmac.new(
            key, normalise_subject(subject_id).encode("utf-8"), hashlib.sha256
        ).hexdigest()
    return hashlib.sha256((salt + subject_id).encode("utf-8")).hexdigest()


def subject_key_id(key: bytes) -> str:
    """The key's fingerprint (first 8 hex of its sha256): recorded in manifests and audit
    events to tell keys apart; too short a part of a hash to help find the key."""
    return hashlib.sha256(key).hexdigest()[:8]


def parse_subject_key(key_hex: str) -> bytes:
    """A hex key as bytes; ``SubjectKeyError`` naming what is wrong (never the key)."""
    text = key_hex.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise SubjectKeyError("the subject key must be hex digits") from None
    if len(key) < MIN_KEY_BYTES:
        raise SubjectKeyError(
            f"the subject key is {len(key)} bytes; it needs at least {MIN_KEY_BYTES} "
            f"({2 * MIN_KEY_BYTES} hex digits)"
        )
    return key


def read_subject_key_file(path: str | os.PathLike) -> bytes:
    """The key from a file holding its hex (a key is never typed on a command line, where
    the shell history and the process list would keep it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"key file {path} does not exist")
    try:
        return parse_subject_key(path.read_text(encoding="ascii"))
    except UnicodeDecodeError:
        raise SubjectKeyError(f"key file {path} does not hold a hex key") from None
    except SubjectKeyError as error:
        raise SubjectKeyError(f"key file {path}: {error}") from None


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
    """Read side: ``SubjectIndex.load(output_dir, key=key).lookup("user-42")`` ->
    [(shard name, row)]. ``key`` is the one the pipeline ran with (``subject_key``);
    an index built before keys loads without one (and with its ``salt``, if any)."""

    def __init__(
        self,
        entries: np.ndarray,
        shard_names: list[str],
        salt: str = "",
        *,
        key: bytes | None = None,
    ):
        self.entries = entries
        self.shard_names = shard_names
        self.salt = salt
        self.key = key

    @classmethod
    def load(
        cls, output_dir: str | Path, salt: str = "", *, key: bytes | None = None
    ) -> SubjectIndex:
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
        check_key(output_dir, manifest, key)
        entries = np.load(index_path, mmap_mode="r")
        return cls(entries, [s["name"] for s in manifest["shards"]], salt, key=key)

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
        return self.lookup_hash(hash_subject(subject_id, self.salt, key=self.key))


def check_key(output_dir: Path, manifest: dict, key: bytes | None) -> None:
    """Refuse a key that cannot find anything: a wrong key answers "no records" for every
    subject, which an erasure would take for "nothing to erase"."""
    if manifest.get("subject_keyed"):
        expected = manifest.get("subject_key_id", "")
        if key is None:
            raise SubjectKeyError(
                f"the subject index of {output_dir} is keyed (key id {expected}): "
                "give the key it was built with"
            )
        if subject_key_id(key) != expected:
            raise SubjectKeyError(
                f"wrong subject key for {output_dir}: the index was built with key id "
                f"{expected}, this key's id is {subject_key_id(key)} (after a key rotation, "
                "re-run the pipeline or use the key of the index's generation)"
            )
    elif key is not None:
        raise SubjectKeyError(
            f"the subject index of {output_dir} was built without a key (plain sha256): "
            "look it up without one, or re-run the pipeline with the key to replace it"
        )
