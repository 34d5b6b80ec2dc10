"""A private redis-server for outage tests: started, stopped and restarted by the test.

    from tests.redisserver import PrivateRedis
    redis = PrivateRedis(tmp_path).start()     # redis.url == "redis://127.0.0.1:PORT/0"
    redis.stop()                               # an outage: connections are refused
    redis.start()                              # back, on the same port, empty
    redis.stop()
    PrivateRedis(tmp_path, persistent=True)    # AOF, fsync always: a restart keeps the data

Never the machine's shared Redis: stopping that one would break everyone's tests.
By default nothing is persisted, so a restart comes back empty, like a Redis without AOF;
`persistent=True` keeps what was accepted before a stop, like a production broker.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    def __init__(self, folder: Path, *, persistent: bool = False):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *(
                    ("--appendonly", "yes", "--appendfsync", "always")
                    if self.persistent
                    else ("--appendonly", "no")
                ),
                "--dir",
                str(self.folder),
            ],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture
def private_redis(tmp_path):
    """A running private Redis, stopped after the test whatever happened."""
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def start_redis_server(timeout: float = 10.0) -> tuple[str, Callable[[], None]]:
    """`url, stop = start_redis_server()`: a PrivateRedis in a folder of its own, for tests
    that need only a server to flood or stop once."""
    redis = PrivateRedis(Path(tempfile.mkdtemp(prefix="private-redis-"))).start(timeout)

    def stop() -> None:
        redis.stop()
        shutil.rmtree(redis.folder, ignore_errors=True)

    return redis.url, stop
