"""Residue scan throughput: every object of a project read for a subject's identifiers.

    .venv/bin/python bench/bench_residue.py            # ~300 MB stored (about a minute)
    .venv/bin/python bench/bench_residue.py --quick    # ~30 MB

Builds, in a temporary local store, what a project holds: raw JSONL uploads (plain),
pipeline shards (zstd frames, `records-*.jsonl.zst`) and inference-archive windows (one
gzip member per record, ~1 KB records as the replicas write them), with a few identifiers
planted. Then `scan_objects` reads all of it for an e-mail address, a name and a customer
id, and the script prints MB/s of stored bytes and of decoded bytes, overall (one worker,
2 threads, and the default: a worker process per CPU) and per encoding (one worker), and
the ratio to the issue's goal (100 MB/s of the project's objects). It exits 1 if a
planted identifier is missed, a false hit appears or the parallel scans differ.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import astuple
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.storage import LocalObjectStore  # noqa: E402
from workers.storage.residue import scan_objects  # noqa: E402

GOAL_MB_S = 100.0
MB = 1024 * 1024
WORDS = (
    "the order shipment refund account password delivery late broken item customer "
    "support ticket please thanks hello invoice address change cancel subscription "
    "warranty replacement email phone number tracking"
).split()
NEEDLES = ["Ann.Lee+promo@Example.com", "Ann Lee", "CUST-004217"]
# What gets planted (each must be found) and near misses (none may be found).
PLANTED = ["annlee@example.com", "ANN  LEE", "a.nn.lee+x@EXAMPLE.COM", "cust-004217"]
NEAR_MISSES = ["joannlee@example.com", "ann leeway", "CUST-0042170"]


def text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def raw_line(rng: random.Random, n: int) -> str:
    return json.dumps(
        {"id": n, "customer": f"CUST-{rng.randint(0, 999999):06d}", "text": text(rng, 30, 200)}
    )


def archive_record(rng: random.Random, n: int) -> str:
    return json.dumps(
        {
            "id": f"{n:032x}",
            "time": 1_790_000_000 + n,
            "endpoint": "chat.completions",
            "status": "ok",
            "caller": {"token_id": 3, "user_id": 4, "username": "ann"},
            "request": {"messages": [{"role": "user", "content": text(rng, 20, 120)}]},
            "response": {"choices": [{"message": {"content": text(rng, 20, 200)}}]},
            "usage": {"prompt_tokens": 5, "completion_tokens": 7},
        }
    )


def plant(rng: random.Random, line: str, planted: list[str]) -> str:
    """Every ~2000th line carries a planted identifier or a near miss."""
    if rng.random() < 1 / 2000:
        word = rng.choice(PLANTED + NEAR_MISSES)
        if word in PLANTED:
            planted.append(word)
        return line[:-1] + f', "note": "contact {word} soon"}}'
    return line


def build(store: LocalObjectStore, total_mb: int, rng: random.Random) -> tuple[int, dict]:
    """Objects of ~8 MB each, a third of the bytes per encoding; returns (planted, sizes)."""
    planted: list[str] = []
    sizes = {"plain": 0, "zstd": 0, "gzip": 0}
    target = total_mb * MB // 3
    n = 0
    for kind in sizes:
        index = 0
        while sizes[kind] < target:
            parts: list[bytes] = []
            size = 0
            while size < 8 * MB and sizes[kind] + size < target:
                n += 1
                if kind == "gzip":
                    line = plant(rng, archive_record(rng, n), planted)
                    part = gzip.compress((line + "\n").encode(), compresslevel=6, mtime=0)
                else:
                    part = (plant(rng, raw_line(rng, n), planted) + "\n").encode()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
            if kind == "zstd":
                data = zstandard.ZstdCompressor(level=3).compress(data)
                key = f"projects/1/clean/v1/records-{index:05d}.jsonl.zst"
            elif kind == "gzip":
                key = f"projects/1/inference/1/2026-11-30/r1/{index:05d}.jsonl.gz"
            else:
                key = f"projects/1/raw/v1/part-{index:05d}.jsonl"
            store.put_bytes(key, data)
            sizes[kind] += size if kind != "zstd" else len(data)
            index += 1
    return len(planted), sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~30 MB instead of ~300 MB")
    args = parser.parse_args()
    total_mb = 30 if args.quick else 300
    rng = random.Random(17)
    with tempfile.TemporaryDirectory(prefix="bench-residue-") as tmp:
        store = LocalObjectStore(tmp, "bench", public_base_url="http://bench", signing_key="k")
        store.ensure_bucket()
        started = time.perf_counter()
        planted, _sizes = build(store, total_mb, rng)
        print(
            f"built {total_mb} MB of objects in {time.perf_counter() - started:.1f} s, "
            f"{planted} identifiers planted"
        )
        ok = True
        per_kind = {}
        for label, prefix in (
            ("plain JSONL", "projects/1/raw/"),
            ("zstd shards", "projects/1/clean/"),
            ("gzip archive", "projects/1/inference/"),
        ):
            report = scan_objects(store, [prefix], NEEDLES, threads=1)
            per_kind[label] = report
            print(
                f"  {label:13s} {report.bytes_stored / MB:7.1f} MB stored "
                f"{report.bytes_stored / MB / report.seconds:7.1f} MB/s stored, "
                f"{report.bytes_decoded / MB / report.seconds:7.1f} MB/s decoded, "
                f"{report.hit_count} hits"
            )
        threaded = scan_objects(store, ["projects/1/"], NEEDLES, threads=2, processes=False)
        print(
            f"whole project, 2 threads: "
            f"{threaded.bytes_stored / MB / threaded.seconds:.1f} MB/s stored, "
            f"{threaded.bytes_decoded / MB / threaded.seconds:.1f} MB/s decoded"
        )
        report = scan_objects(store, ["projects/1/"], NEEDLES, threads=1)
        stored_rate = report.bytes_stored / MB / report.seconds
        decoded_rate = report.bytes_decoded / MB / report.seconds
        print(
            f"whole project: {report.objects} objects, {report.bytes_stored / MB:.1f} MB "
            f"stored ({report.bytes_decoded / MB:.1f} MB decoded) in {report.seconds:.2f} s"
        )
        print(
            f"  1 worker: {stored_rate:.1f} MB/s of stored bytes ({stored_rate / GOAL_MB_S:.2f}x "
            f"the {GOAL_MB_S:.0f} MB/s goal), {decoded_rate:.1f} MB/s of decoded text "
            f"({decoded_rate / GOAL_MB_S:.2f}x)"
        )
        # What the erasure gets: scan_objects' defaults (one worker process per CPU).
        default = scan_objects(store, ["projects/1/"], NEEDLES)
        stored_rate = default.bytes_stored / MB / default.seconds
        decoded_rate = default.bytes_decoded / MB / default.seconds
        print(
            f"  default ({min(4, os.cpu_count() or 1)} worker processes): {stored_rate:.1f} MB/s "
            f"of stored bytes ({stored_rate / GOAL_MB_S:.2f}x the goal), {decoded_rate:.1f} "
            f"MB/s of decoded text ({decoded_rate / GOAL_MB_S:.2f}x)"
        )
        for other in (threaded, default):
            if [astuple(h) for h in other.hits] != [astuple(h) for h in report.hits]:
                print("FAIL: the parallel scans report other hits than one worker")
                ok = False
        if report.hit_count != planted or default.hit_count != planted:
            print(f"FAIL: {report.hit_count} hits, {planted} planted")
            ok = False
        if report.errors:
            print(f"FAIL: unreadable objects: {report.errors[:3]}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
