"""A 1 GB dataset upload through the API, against the `minio` client alone on the same store.

    .venv/bin/python bench/bench_upload.py            # 1 GB
    .venv/bin/python bench/bench_upload.py --quick    # 128 MB

The store is an S3 server on loopback (moto's server mode, a separate process); the web
app runs under gunicorn with the S3 backend, like compose does with MinIO. Our path is the
product's: POST the declaration, PUT the parts to their presigned URLs (3 at a time, as
the minio client uploads its parts), POST complete, which makes the store assemble the
object and the web process read it back to check size and sha256. The reference is
`Minio.fput_object` of the same file to the same server. The web processes' RSS is sampled
all along.
Goals (issue 5): web process under 200 MB RSS; at least 80% of the minio client's speed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT), str(ROOT / "bench")]

from bench_api import (  # noqa: E402
    PeakSampler,
    free_port,
    make_env,
    prepare_database,
    psql,
    run_python,
    start_gunicorn,
)

DB_NAME = "controlplane_bench_upload"
PART = 64 * 1024 * 1024
ROUNDS = 2
BUCKET = "bench"


def start_s3() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the S3 server did not start")


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as out:
        for i in range(size // len(block)):
            chunk = block[:8] + i.to_bytes(8, "big") + block[16:]  # no two blocks alike
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def tree_rss(root: psutil.Process) -> int:
    """The largest RSS among the gunicorn master and its workers."""
    peak = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return peak


def api_upload(base: str, token: str, project: int, path: Path, sha256: str) -> tuple[float, float]:
    """Returns (seconds sending parts, seconds in `complete`)."""

    def call(method: str, url: str, body: dict) -> dict:
        request = urllib.request.Request(
            base + url,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    dataset = call(
        "POST",
        f"/api/v1/projects/{project}/datasets/",
        {"name": "Big", "slug": f"big-{time.monotonic_ns()}", "kind": "text"},
    )
    versions = f"/api/v1/projects/{project}/datasets/{dataset['id']}/versions/"
    version = call(
        "POST",
        versions,
        {
            "files": [{"name": path.name, "size": path.stat().st_size, "sha256": sha256}],
            "part_size": PART,
        },
    )
    (upload,) = version["uploads"]

    def put(part: dict) -> dict:
        with path.open("rb") as stream:
            stream.seek((part["part_number"] - 1) * upload["part_size"])
            body = stream.read(upload["part_size"])
        # urllib would label the body a form, which S3 servers parse instead of storing.
        request = urllib.request.Request(
            part["url"],
            data=body,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return {"part_number": part["part_number"], "etag": response.headers["ETag"].strip('"')}

    sending = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(put, upload["parts"]))
    completing = time.perf_counter()
    done = call(
        "POST",
        f"{versions}{version['number']}/complete/",
        {"files": [{"file_id": upload["file_id"], "parts": parts}]},
    )
    if done["state"] != "ready":
        raise SystemExit(f"upload ended {done['state']}")
    return completing - sending, time.perf_counter() - completing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 MB instead of 1 GB")
    args = parser.parse_args()
    size = (128 if args.quick else 1024) * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    s3, endpoint = start_s3()
    web = None
    env = make_env(
        work,
        DB_NAME,
        OBJECT_STORE_ENDPOINT=endpoint,
        OBJECT_STORE_BUCKET=BUCKET,
        UPLOAD_MAX_BYTES=str(2 * size),
        OBJECT_STORE_ACCESS_KEY="bench-access",
        OBJECT_STORE_SECRET_KEY="bench-secret",
    )
    try:
        prepare_database(env, DB_NAME)
        seed = (
            "import django; django.setup()\n"
            "from django.contrib.auth.models import User\n"
            "from controlplane.accounts.services import api_token_create\n"
            "from controlplane.projects.services import project_create\n"
            "u = User.objects.create_user('bench', password='bench-password-1')\n"
            "p = project_create(name='Bench', slug='bench', actor=u)\n"
            "print(p.pk, api_token_create(user=u, name='bench')[1])\n"
        )
        project, token = run_python(env, seed)[-2:]
        port = free_port()
        web, _ = start_gunicorn(env, port)
        path = work / "big.bin"
        sha256 = make_file(path, size)
        idle_rss = tree_rss(psutil.Process(web.pid))

        from minio import Minio
        from minio.commonconfig import ENABLED
        from minio.versioningconfig import VersioningConfig

        client = Minio(endpoint, access_key="bench-access", secret_key="bench-secret", secure=False)
        client.make_bucket(BUCKET)
        client.set_bucket_versioning(BUCKET, VersioningConfig(ENABLED))  # as compose's MinIO
        # Alternate the two, ROUNDS times each, and keep each one's best: the S3 server's
        # speed drifts by a third between runs on this machine.
        references, runs = [], []
        web_process = psutil.Process(web.pid)
        sampler = PeakSampler(lambda: tree_rss(web_process), 0.05)
        for round_ in range(ROUNDS):
            started = time.perf_counter()
            client.fput_object(BUCKET, f"reference/big-{round_}.bin", str(path), part_size=PART)
            references.append(time.perf_counter() - started)
            started = time.perf_counter()
            phases = api_upload(f"http://127.0.0.1:{port}", token, int(project), path, sha256)
            runs.append((time.perf_counter() - started, *phases))
        peak_rss = sampler.stop()
        reference = min(references)
        ours, sending, completing = min(runs)

        mb = size / 1e6
        print(f"{size / 2**20:.0f} MiB through an S3 server on loopback (moto), best of {ROUNDS}")
        print(
            f"minio client fput_object (reference): {reference:6.1f}s  {mb / reference:7.1f} MB/s"
        )
        print(
            f"API: declare, presigned parts x3, complete + verify: {ours:6.1f}s  {mb / ours:7.1f} MB/s"
            f"  = {reference / ours:.2f}x the reference (goal >= 0.80)"
        )
        print(f"  parts {sending:.1f}s, complete (assemble, read back, sha256) {completing:.1f}s")
        print(
            f"web processes peak RSS {peak_rss / 2**20:.0f} MiB (idle {idle_rss / 2**20:.0f} MiB; "
            f"goal < 200 MiB)"
        )
        return 0
    finally:
        for proc in (web, s3):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
        psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
        for leftover in work.glob("*.bin"):
            leftover.unlink()


if __name__ == "__main__":
    sys.exit(main())
