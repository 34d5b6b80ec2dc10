"""What indexing a raw upload by its subject field adds to ingestion (~50 MB of JSONL).

    .venv/bin/python bench/bench_raw_index.py              # 100,000 tickets, ~51 MB
    .venv/bin/python bench/bench_raw_index.py --records N

On a local object store in a temporary folder (removed at the end), with the tickets of
bench/support_tickets.py (subject field `customer_id`), it times:
1. ingestion as it is: the parts written to the store (what the client's PUTs cost the
   store) and `multipart_complete` (assemble, then read the object back for its sha256);
2. the extra pass of controlplane/datasets/subject_index.py: the object streamed from the
   store, every record's subject field hashed with a key, the index written
   (engine.data.raw_subject_index), in the control worker after the version is ready
   (the `complete` answer does not wait for it);
3. for comparison, what an erasure's find costs without the index (the `field` pass over
   the downloaded file) and with it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from support_tickets import customer, write_tickets  # noqa: E402

from engine.data.erasure import find_subject  # noqa: E402
from engine.data.raw_subject_index import RawIndexBuilder, open_lines  # noqa: E402
from workers.storage.local import LocalObjectStore  # noqa: E402

KEY = bytes.fromhex("7a" * 32)
PART = 16 * 1024**2


def _ingest(store: LocalObjectStore, key: str, path: Path) -> float:
    started = time.perf_counter()
    upload = store.multipart_create(key)
    parts = []
    with path.open("rb") as source:
        number = 1
        while chunk := source.read(PART):
            etag = store.upload_part(key, upload, number, io.BytesIO(chunk), len(chunk))
            parts.append((number, etag))
            number += 1
    store.multipart_complete(key, upload, parts)
    return time.perf_counter() - started


def _index(store: LocalObjectStore, key: str, name: str, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    builder = RawIndexBuilder("customer_id", KEY)
    with store.open_stream(key) as raw, open_lines(raw, name) as lines:
        builder.add_lines(name, lines)
    manifest = builder.write(out)
    return time.perf_counter() - started, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-raw-index-") as work:
        work = Path(work)
        path = work / "tickets.jsonl"
        size = write_tickets(path, records=args.records, customers=args.records // 100)
        store = LocalObjectStore(
            work / "objects", "bench", public_base_url="http://localhost", signing_key="bench"
        )
        store.ensure_bucket()
        mb = size / 1e6
        ingest = _ingest(store, "v1/tickets.jsonl", path)
        index, manifest = _index(store, "v1/tickets.jsonl", "tickets.jsonl", work / "index")
        subject = customer(7)[0]
        field_started = time.perf_counter()
        plain = work / "plain"
        plain.mkdir()
        os.link(path, plain / "tickets.jsonl")
        by_field = find_subject(plain, identifiers=[subject], subject_field="customer_id", key=KEY)
        field = time.perf_counter() - field_started
        os.link(path, work / "index" / "tickets.jsonl")
        lookup_started = time.perf_counter()
        by_index = find_subject(
            work / "index", identifiers=[subject], subject_field="customer_id", key=KEY
        )
        lookup = time.perf_counter() - lookup_started
        assert by_index.files[0].method == "index" and by_field.files[0].method == "field"
        assert by_index.files[0].positions == by_field.files[0].positions
        index_bytes = sum(p.stat().st_size for p in (work / "index").glob("subject_index.*"))
        print(f"{args.records} records, {mb:.1f} MB, {manifest['entries']} index entries")
        print(
            f"ingestion today (parts + complete's read-back): {ingest:.2f} s ({mb / ingest:.0f} MB/s)"
        )
        print(
            f"subject index pass (control worker):           {index:.2f} s ({mb / index:.0f} MB/s)"
        )
        print(
            f"  ratio index / ingestion: {index / ingest:.2f}; index files {index_bytes / 1e6:.1f} MB"
        )
        print(f"erasure find without the index (field pass):    {field:.2f} s")
        print(
            f"erasure find through the index:                 {lookup * 1000:.1f} ms "
            f"({by_index.hits} records)"
        )


if __name__ == "__main__":
    main()
