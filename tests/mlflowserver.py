"""A real `mlflow server` on loopback for tests: SQLite backend and served artifacts in a folder.

    from tests.mlflowserver import MlflowServer
    server = MlflowServer(tmp_path).start()     # a free port; blocks until /health answers
    client = MlflowClient(tracking_uri=server.url)
    server.stop(); server.start()               # the same port, database and artifacts again
    server.stop()

or the fixture `mlflow_server` (one server per test module; `pytest_plugins =
["tests.mlflowserver"]` in the test module, or import the fixture). The server runs in its
own process group with one worker; its output goes to `<folder>/mlflow-server.log`,
shown when it does not come up.
"""

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

START_TIMEOUT_SECONDS = 90.0  # the first start creates the SQLite schema (alembic migrations)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.log = self.folder / "mlflow-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
        ]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> MlflowServer:
        if self.process is not None and self.process.poll() is None:
            return self
        # The server's own settings only: a client's tracking URI in the test's env is not its.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # No background job runner (a pool of huey consumers the registry never uses).
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.folder,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.process.returncode}\n{self.tail()}"
                )
            if self.healthy():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not up after {timeout}s\n{self.tail()}")

    def stop(self) -> None:
        """Stop the server (its whole process group: uvicorn's worker too)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        try:  # children that outlived the server's own exit (uvicorn's worker)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10  # until the port is free for a restart
        while time.monotonic() < deadline and self.healthy():
            time.sleep(0.2)

    def tail(self) -> str:
        if not self.log.is_file():
            return ""
        return f"--- {self.log.name}\n" + self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A running `mlflow server` (SQLite, served artifacts) for the tests of one module."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()
