"""Object store: a 1 GB put then get through both backends, in flat memory.

    .venv/bin/python bench/bench_storage.py            # 1 GB (under a minute)
    .venv/bin/python bench/bench_storage.py --quick    # 64 MB

Measures MB/s of put_stream (sha256 computed on the way in) and of a get that drains
iter_chunks while checking the sha256, on the local store and on S3 against
`python -m moto.server` started as a separate process on a free loopback port (so the
server's own memory is not counted). The references, on the same file in the same run:
a raw copy (read, sha256, write, fsync) for puts and a raw read with sha256 for gets.
The benchmarking process's peak RSS must stay under 200 MB whatever the object size;
the script exits 1 if it does not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.storage import LocalObjectStore, ObjectStore, S3ObjectStore  # noqa: E402

RSS_LIMIT_MB = 200
CHUNK = 1024 * 1024
MB = 1024 * 1024
# Disk-bound figures vary by 2-3x from run to run on a shared disk: keep the best of two.
DISK_REPEATS = 2


class PeakRSS:
    """Samples this process's RSS every few milliseconds; `peak_mb` is the highest seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / MB


def make_source(path: Path, size: int) -> str:
    """A file of pseudo-random bytes (incompressible, different in every part); its sha256."""
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    with path.open("wb") as out:
        for index in range(size // CHUNK):
            # A different first 8 bytes per MiB: no two parts of the upload are equal.
            chunk = index.to_bytes(8, "little") + block[8:]
            digest.update(chunk)
            out.write(chunk)
        # On disk before timing starts, so the reference copy does not pay its writeback.
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


# The references do the least work a put or a verified get must do (move the bytes and
# hash them), so the ratios show what the store itself costs.
def raw_copy(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def raw_read(source: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def drain(store: ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in store.iter_chunks(key, chunk_size=CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def timed(label: str, size: int, action: Callable[[], object]) -> tuple[float, float, object]:
    """Run `action`; returns (MB/s, peak RSS in MB during it, its result)."""
    process = psutil.Process()
    with PeakRSS() as rss:
        cpu_before = sum(process.cpu_times()[:2])
        start = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - start
        # CPU of this process only: far below the wall time means the server is the limit.
        cpu_seconds = sum(process.cpu_times()[:2]) - cpu_before
    rate = size / MB / seconds
    print(
        f"  {label:<26} {rate:8.1f} MB/s  {seconds:6.1f} s wall  {cpu_seconds:6.1f} s cpu"
        f"  peak RSS {rss.peak_mb:6.1f} MB"
    )
    return rate, rss.peak_mb, result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """`python -m moto.server` in its own process; yields "127.0.0.1:PORT"."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("error: moto server did not start") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def bench_store(
    name: str, store: ObjectStore, source: Path, size: int, sha256: str, repeats: int
) -> dict:
    """Best MB/s of `repeats` put+get rounds (this machine's disk is shared and noisy)."""
    print(f"{name}:")
    key = "projects/1/bench/object.bin"
    best = {"put": 0.0, "get": 0.0, "peak": 0.0}
    for _ in range(repeats):
        with source.open("rb") as stream:
            put_rate, put_peak, stored = timed(
                "put_stream", size, lambda: store.put_stream(key, stream, length=size)
            )
        if stored.sha256 != sha256 or stored.size != size:
            raise SystemExit(f"error: {name} stored {stored.size} bytes, sha256 {stored.sha256}")
        get_rate, get_peak, read_sha256 = timed(
            "get (iter_chunks+sha256)", size, lambda: drain(store, key)
        )
        if read_sha256 != sha256:
            raise SystemExit(f"error: {name} returned different bytes (sha256 {read_sha256})")
        store.delete(key)
        best = {
            "put": max(best["put"], put_rate),
            "get": max(best["get"], get_rate),
            "peak": max(best["peak"], put_peak, get_peak),
        }
    return best


def best_rate(label: str, size: int, action: Callable[[], object], repeats: int) -> float:
    return max(timed(label, size, action)[0] for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MB instead of 1 GB")
    args = parser.parse_args(argv)
    size = (64 if args.quick else 1024) * MB

    with tempfile.TemporaryDirectory(prefix="bench-storage-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        source = work / "source.bin"
        sha256 = make_source(source, size)
        print(
            f"object: {size // MB} MB; process RSS before: {psutil.Process().memory_info().rss / MB:.1f} MB"
        )

        print("reference:")
        copy = work / "copy.bin"
        copy_rate = best_rate(
            "raw copy+sha256+fsync", size, lambda: raw_copy(source, copy), DISK_REPEATS
        )
        copy.unlink()
        read_rate = best_rate("raw read+sha256", size, lambda: raw_read(source), DISK_REPEATS)

        local = LocalObjectStore(
            work / "objects", "bench", public_base_url="http://127.0.0.1", signing_key="bench"
        )
        local.ensure_bucket()
        results = {"local": bench_store("local", local, source, size, sha256, DISK_REPEATS)}
        shutil.rmtree(work / "objects")

        with moto_server() as endpoint:
            s3 = S3ObjectStore(endpoint, "bench", access_key="bench", secret_key="bench-secret")
            s3.ensure_bucket()
            # One round: moto, not the disk, sets the pace, and a round takes ~20 s.
            results["s3 (moto)"] = bench_store("s3 (moto server)", s3, source, size, sha256, 1)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"\nsummary ({size // MB} MB object; reference: raw copy {copy_rate:.1f} MB/s, "
        f"raw read {read_rate:.1f} MB/s):"
    )
    for name, figures in results.items():
        print(
            f"  {name:<10} put {figures['put']:7.1f} MB/s ({figures['put'] / copy_rate:.2f}x copy)"
            f"  get {figures['get']:7.1f} MB/s ({figures['get'] / read_rate:.2f}x read)"
            f"  peak RSS {figures['peak']:.0f} MB"
        )
    verdict = "ok" if peak_mb < RSS_LIMIT_MB else "OVER THE LIMIT"
    print(f"  process peak RSS (ru_maxrss) {peak_mb:.0f} MB, limit {RSS_LIMIT_MB} MB: {verdict}")
    return 0 if peak_mb < RSS_LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
