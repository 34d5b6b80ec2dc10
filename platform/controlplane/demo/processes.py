"""The demo's child processes: the two Celery workers, the MLflow UI, the corpus fetcher.

Each runs in a session of its own (start_new_session) so that stopping it stops its own
children too (Celery's pool, MLflow's gunicorn).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

ROOT = Path(settings.BASE_DIR)
MLFLOW_UI_PORT = 5000


def worker_commands() -> dict[str, list[str]]:
    host = socket.gethostname()
    celery = [sys.executable, "-m", "celery"]
    common = ["--pool", "solo", "--loglevel", "WARNING"]
    return {
        "control": [
            *celery,
            *("-A", "controlplane.celery_app", "worker", "-Q", "control", "-B"),
            *common,
            *("-n", f"control@{host}"),
        ],
        "cpu": [
            *celery,
            *("-A", "workers.celery_app", "worker", "-Q", "cpu"),
            *common,
            *("-n", f"cpu@{host}"),
        ],
    }


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "platform"), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    return env


def logs_dir() -> Path:
    logs = Path(settings.DATA_DIR) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs


def workers_start(stdout) -> list[subprocess.Popen]:
    """A control worker (with the beat: reaper, outbox) and a cpu worker, logging to files."""
    processes = []
    for name, command in worker_commands().items():
        log_path = logs_dir() / f"worker-{name}.log"
        log = log_path.open("ab")  # lives as long as the process
        processes.append(
            subprocess.Popen(
                command, cwd=ROOT, env=child_env(), stdout=log, stderr=log, start_new_session=True
            )
        )
        stdout.write(f"    {name} worker pid {processes[-1].pid}, log {log_path}")
    return processes


def workers_stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def shakespeare_files() -> list[Path]:
    # A separate process: the platform never imports the engine (it would pull in torch).
    result = subprocess.run(
        [sys.executable, "-m", "engine.data.corpora", "modern"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise CommandError(f"could not fetch the Shakespeare corpus: {result.stderr.strip()}")
    return [Path(line) for line in result.stdout.splitlines() if line.endswith(".txt")]


def mlflow_ui_start(stdout) -> subprocess.Popen | None:
    """The MLflow UI over the embedded tracking store, so run pages can link their runs."""
    from workers.config import mlflow_tracking_uri

    uri = mlflow_tracking_uri()
    if settings.MLFLOW_UI_URL or not uri.startswith("sqlite:"):
        return None  # a tracking server of its own is configured
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", MLFLOW_UI_PORT)) == 0:
            stdout.write(
                f"    port {MLFLOW_UI_PORT} is taken: no MLflow UI (run pages show run ids)"
            )
            return None
    log = (logs_dir() / "mlflow-ui.log").open("ab")
    server = ["server", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *server, "--port", str(MLFLOW_UI_PORT)],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    settings.MLFLOW_UI_URL = f"http://127.0.0.1:{MLFLOW_UI_PORT}"
    stdout.write(f"    MLflow UI on {settings.MLFLOW_UI_URL}/ (run pages link to it)")
    return process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_logged(name: str, command: list[str], stdout) -> subprocess.Popen:
    log_path = logs_dir() / f"{name}.log"
    log = log_path.open("ab")  # lives as long as the process
    process = subprocess.Popen(
        command, cwd=ROOT, env=child_env(), stdout=log, stderr=log, start_new_session=True
    )
    stdout.write(f"    {name} pid {process.pid}, log {log_path}")
    return process


def web_start(port: int, stdout) -> subprocess.Popen:
    """The platform's web process (gunicorn), for the serve node to report to."""
    command = [
        *(sys.executable, "-m", "gunicorn", "-c", "python:controlplane.gunicorn_conf"),
        *("--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"),
        "controlplane.wsgi",
    ]
    return _start_logged("serve-web", command, stdout)


def serve_node_start(platform_url: str, port: int, stdout) -> subprocess.Popen:
    """A serve node (`python -m workers.serve`) on loopback, holding up to two replicas."""
    command = [
        *(sys.executable, "-m", "workers.serve", "--platform-url", platform_url),
        *("--listen", f"127.0.0.1:{port}", "--public-url", f"http://127.0.0.1:{port}"),
        *("--name", "demo-node", "--device", "cpu", "--capacity", "2"),
    ]
    return _start_logged("serve-node", command, stdout)


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process's session (a node drains its replicas), SIGKILL after `timeout`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
