"""Exact and near-duplicate detection, global across every shard of a run.

Exact: a 64-bit BLAKE2b of the casefolded, whitespace-collapsed text; the first record in
input order survives. (With 2**64 values, a chance collision among a billion records is
about 3 in 100 000.)

Near: MinHash over word 5-grams and LSH banding (Broder 1997; Leskovec et al., Mining of
Massive Datasets, ch. 3). ``bands x rows`` hash values per document; two documents become
candidates when all ``rows`` values of any band agree, which happens with probability
``1 - (1 - J**rows)**bands`` for Jaccard similarity J. The default 9 x 13 is datasketch's
optimum for a 0.8 threshold (S-curve midpoint ~0.84, 50% at J~0.82). Candidates are joined
by union-find; each cluster keeps its earliest record in input order, so the survivor does
not depend on how the work was split across processes.

Words are runs of ASCII letters, digits and ``_`` and of non-ASCII characters other than
Unicode punctuation and spaces (U+00A0-U+00BF, U+2000-U+206F), after lower-casing.

Speed: no per-word or per-shingle Python work. Words are found and hashed on the UTF-8
bytes with numpy (a polynomial over each word's bytes, then a 64-bit finalizer), 5-gram
hashes are a vectorised polynomial of word hashes, and the ``bands*rows`` permutations
are multiply-shift hashes ``(a*x + b) mod 2**64`` evaluated as one numpy outer product.
Duplicate shingles are left in: they cannot change a minimum.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

# Bytes that belong to words: ASCII letters, digits, "_" and every byte >= 0x80 (parts of
# non-ASCII characters; the punctuation among those is masked in _word_hashes).
_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[list(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")] = True
_WORD_BYTES[0x80:] = True
_BYTE_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime, odd
_MAX_WORD_BYTES = 256  # bytes past this add no information to a word's hash
_POWERS = (
    np.cumprod(np.full(_MAX_WORD_BYTES, _BYTE_MULTIPLIER, dtype=np.uint64)) // _BYTE_MULTIPLIER
)
# Mixing constants for combining word hashes into an n-gram hash (odd, so invertible mod 2**64).
_SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_BAND_MULTIPLIER = np.uint64(0xC2B2AE3D27D4EB4F)
_SHINGLE_CHUNK = 4096  # shingles per outer product: bounds the temporary at 4096 x 117 x 8 B


@dataclass
class ExactDedupConfig:
    casefold: bool = True  # "Hello World" and "hello world" count as one document


@dataclass
class NearDedupConfig:
    ngram: int = 5  # word 5-grams: long enough that shared phrases are not shared documents
    bands: int = 9  # 9 x 13 = 117 permutations; candidate curve centred near Jaccard 0.8
    rows: int = 13
    seed: int = 1  # fixes the permutations: same input, same clusters, on every machine
    # Optional check of each candidate pair against the MinHash estimate of Jaccard;
    # 0 accepts every LSH candidate (what datasketch's MinHashLSH returns).
    min_similarity: float = 0.0


def content_hash(text: str, casefold: bool = True) -> int:
    """64-bit hash of the text with case and whitespace differences removed."""
    normalized = " ".join((text.casefold() if casefold else text).split())
    return int.from_bytes(
        hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little"
    )


def _mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit affects every output bit."""
    h = h ^ (h >> np.uint64(33))
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def word_hashes(text: str) -> np.ndarray:
    """64-bit hashes of the lower-cased words of ``text``, in order (see the module doc)."""
    data = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    inside = _WORD_BYTES[data]
    if not data.size:
        return np.zeros(0, dtype=np.uint64)
    if (data >= 0xC2).any():  # lead bytes of non-ASCII characters
        # U+00A0-U+00BF are C2 A0..BF; U+2000-U+206F are E2 80 xx / E2 81 xx in UTF-8.
        lead = np.flatnonzero((data[:-1] == 0xC2) & (data[1:] >= 0xA0) & (data[1:] <= 0xBF))
        inside[lead] = inside[lead + 1] = False
        lead = np.flatnonzero((data[:-2] == 0xE2) & ((data[1:-1] == 0x80) | (data[1:-1] == 0x81)))
        inside[lead] = inside[lead + 1] = inside[lead + 2] = False
    positions = np.flatnonzero(inside)
    if not positions.size:
        return np.zeros(0, dtype=np.uint64)
    is_start = np.empty(len(positions), dtype=bool)
    is_start[0] = True
    np.not_equal(positions[1:], positions[:-1] + 1, out=is_start[1:])
    starts = np.flatnonzero(is_start)
    # offset of each byte inside its word -> its weight P**offset
    offsets = np.arange(len(positions)) - np.repeat(
        starts, np.diff(np.append(starts, len(positions)))
    )
    weights = _POWERS[np.minimum(offsets, _MAX_WORD_BYTES - 1)]
    values = (data[positions].astype(np.uint64) + np.uint64(1)) * weights
    return _mix64(np.add.reduceat(values, starts))


class MinHasher:
    def __init__(self, config: NearDedupConfig):
        if config.ngram < 1 or config.bands < 1 or config.rows < 1:
            raise ValueError("ngram, bands and rows must be 1 or more")
        self.config = config
        self.num_perm = config.bands * config.rows
        rng = np.random.default_rng(config.seed)
        self._a = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) * np.uint64(
            2
        ) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """64-bit hashes of the word n-grams (one hash of the whole text if it is shorter)."""
        hashes = word_hashes(text)
        n = self.config.ngram
        if len(hashes) < n:
            whole = np.array([hashes.sum()], dtype=np.uint64)
            return whole * _SHINGLE_MULTIPLIER + np.uint64(len(hashes))
        shingles = hashes[: len(hashes) - n + 1].copy()
        for offset in range(1, n):
            shingles = (
                shingles * _SHINGLE_MULTIPLIER + hashes[offset : len(hashes) - n + 1 + offset]
            )
        return shingles

    def signature(self, text: str) -> np.ndarray:
        """(bands*rows,) uint32 MinHash signature."""
        shingles = self.shingles(text)
        minimum = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(shingles), _SHINGLE_CHUNK):
            chunk = shingles[start : start + _SHINGLE_CHUNK, None]
            permuted = np.multiply(chunk, self._a)  # (S, P): every shingle under every permutation
            permuted += self._b
            np.minimum(minimum, permuted.min(axis=0), out=minimum)
        # The high half of a multiply-shift hash is the well-mixed half.
        return (minimum >> np.uint64(32)).astype(np.uint32)

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """(N, bands*rows) signatures -> (N, bands) uint64 bucket keys."""
        bands = signatures.reshape(len(signatures), self.config.bands, self.config.rows).astype(
            np.uint64
        )
        keys = np.zeros((len(signatures), self.config.bands), dtype=np.uint64)
        for row in range(self.config.rows):
            keys = keys * _BAND_MULTIPLIER + bands[:, :, row] + np.uint64(1)
        return keys


class UnionFind:
    """Disjoint sets over 0..n-1; the root of a set is always its smallest member."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            low, high = min(root_a, root_b), max(root_a, root_b)
            self.parent[high] = low


def exact_duplicates(hashes: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """For each record, the index of the earlier record it duplicates, or -1."""
    duplicate_of = np.full(len(hashes), -1, dtype=np.int64)
    candidates = np.flatnonzero(alive)
    if len(candidates) == 0:
        return duplicate_of
    _, first, inverse = np.unique(hashes[candidates], return_index=True, return_inverse=True)
    first_of_each = candidates[first[inverse]]
    is_duplicate = first_of_each != candidates
    duplicate_of[candidates[is_duplicate]] = first_of_each[is_duplicate]
    return duplicate_of


def bucket_edges(band_hashes: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """(E, 2) pairs (first member of a bucket, other member), over all bands, deduplicated."""
    candidates = np.flatnonzero(alive)
    edges = []
    for band in range(band_hashes.shape[1]):
        keys = band_hashes[candidates, band]
        order = np.argsort(keys, kind="stable")  # stable: bucket heads are earliest in input
        sorted_keys = keys[order]
        starts = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
        head_position = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
        members = ~starts
        if members.any():
            heads = candidates[order[head_position[members]]]
            others = candidates[order[members]]
            edges.append(np.stack([heads, others], axis=1))
    if not edges:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(edges), axis=0)


def estimated_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> float:
    return float(np.mean(signature_a == signature_b))


def near_duplicates(
    band_hashes: np.ndarray,
    alive: np.ndarray,
    signatures: np.ndarray | None = None,
    min_similarity: float = 0.0,
) -> np.ndarray:
    """For each record, the surviving record of its cluster if it is a near-duplicate, else -1."""
    edges = bucket_edges(band_hashes, alive)
    if min_similarity > 0 and len(edges):
        if signatures is None:
            raise ValueError("min_similarity needs the signatures")
        agreement = (signatures[edges[:, 0]] == signatures[edges[:, 1]]).mean(axis=1)
        edges = edges[agreement >= min_similarity]
    union_find = UnionFind(len(band_hashes))
    for a, b in edges.tolist():
        union_find.union(a, b)
    survivor_of = np.full(len(band_hashes), -1, dtype=np.int64)
    for member in np.unique(edges).tolist():
        root = union_find.find(member)
        if root != member:
            survivor_of[member] = root
    return survivor_of
