"""A private Redis for tests that stop, restart or flood a broker (never the shared one).

    from tests.redisserver import start_redis_server
    url, stop = start_redis_server()      # "redis://127.0.0.1:PORT/0"
    ...
    stop()

No persistence, no config file; the server dies with the test run's process group too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis_server(timeout: float = 10.0) -> tuple[str, Callable[[], None]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError(f"redis-server did not answer on port {port}")

    def stop() -> None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    return f"redis://127.0.0.1:{port}/0", stop
