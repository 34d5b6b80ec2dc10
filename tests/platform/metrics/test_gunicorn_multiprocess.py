"""Under gunicorn every worker process counts its own requests: with PROMETHEUS_MULTIPROC_DIR
one scrape, answered by whichever worker, sums them all, including a worker that died."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tests.platform.metrics.conftest import sample

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _wait_up(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("gunicorn did not answer")


def _worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def _held_requests(port: int, count: int) -> None:
    """Send `count` requests whose headers end only once all are open: a sync gunicorn worker
    is busy with one connection at a time, so each is served by a different worker process
    (the kernel would otherwise be free to hand every quick request to the same one)."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sockets.append(sock)
        time.sleep(0.3)  # let a worker accept it and block reading the rest
    for sock in sockets:
        sock.sendall(b"Connection: close\r\n\r\n")
    for sock in sockets:
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        sock.close()


def _healthz_count(base: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = _get(f"{base}/metrics").decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    name = "controlplane_http_request_duration_seconds"
    return sample(families, name, "_count", route="/healthz", method="GET", status="2xx") or 0


def test_a_scrape_sums_every_worker_process(tmp_path):
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the gunicorn processes share the test database through PostgreSQL")
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "histogram_99999.db").write_bytes(b"")  # an earlier run's: wiped at start
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DATABASE_URL": (
            f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
        ),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "3",
        "GUNICORN_ACCESS_LOG": "/dev/null",
        "METRICS_TOKEN": "",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:controlplane.gunicorn_conf"]
        + ["controlplane.wsgi"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(f"{base}/healthz", server)
        assert not (metrics_dir / "histogram_99999.db").exists()
        start = _healthz_count(base)
        for _ in range(27):
            _get(f"{base}/healthz")
        _held_requests(port, 3)
        assert _healthz_count(base) == start + 30
        written = {p.name for p in metrics_dir.glob("histogram_*.db")}
        assert len(written) >= 2  # more than one process did count

        os.kill(_worker_pids(server.pid)[0], signal.SIGKILL)  # gunicorn starts another
        time.sleep(1.5)
        _wait_up(f"{base}/healthz", server)
        # The dead worker's requests happened: still counted after child_exit.
        assert _healthz_count(base) >= start + 30
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
