"""`python -m workers.serve`: options, their environment variables, and a real run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workers.serve.node_stubs import (
    NODE_SECRET,
    STUB_REPLICA,
    StubPlatform,
    replica_spec,
    wait_for,
)
from workers.serve.__main__ import parse_args

ROOT = Path(__file__).resolve().parents[3]
SERVE_ENV = (
    "SERVE_PLATFORM_URL",
    "SERVE_LISTEN",
    "SERVE_PUBLIC_URL",
    "SERVE_NODE_NAME",
    "SERVE_DEVICE",
    "SERVE_CAPACITY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in SERVE_ENV:
        monkeypatch.delenv(name, raising=False)


def test_options_and_their_defaults():
    args = parse_args(["--platform-url", "http://web:8000/", "--name", "box1"])
    assert args.platform_url == "http://web:8000"
    assert (args.host, args.port) == ("0.0.0.0", 8100)
    assert args.public_url == "http://box1:8100"
    assert args.device == "cpu" and args.capacity == 2
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert args.replica_command == [
        sys.executable,
        "-m",
        "workers.serve.replica",
        "--threads",
        threads,
    ]
    cuda = parse_args(["--device", "cuda"])
    assert cuda.replica_command == [sys.executable, "-m", "workers.serve.replica"]


def test_the_environment_fills_in_what_the_command_line_leaves_out(monkeypatch):
    monkeypatch.setenv("SERVE_LISTEN", "127.0.0.1:9001")
    monkeypatch.setenv("SERVE_PUBLIC_URL", "https://serve.example.com")
    monkeypatch.setenv("SERVE_DEVICE", "cuda")
    monkeypatch.setenv("SERVE_CAPACITY", "3")
    args = parse_args(["--capacity", "5"])
    assert (args.host, args.port) == ("127.0.0.1", 9001)
    assert args.public_url == "https://serve.example.com"
    assert args.device == "cuda" and args.capacity == 5


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--capacity", "0"], {}, "--capacity"),
        (["--capacity", "many"], {}, "--capacity"),
        ([], {"SERVE_CAPACITY": "many"}, "SERVE_CAPACITY"),
        (["--device", "tpu"], {}, "--device (SERVE_DEVICE)"),
        ([], {"SERVE_DEVICE": "tpu"}, "--device (SERVE_DEVICE)"),
        (["--listen", "8100"], {}, "--listen (SERVE_LISTEN)"),
        (["--listen", "0.0.0.0:99999"], {}, "--listen (SERVE_LISTEN)"),
        (["--platform-url", "web:8000"], {}, "--platform-url (SERVE_PLATFORM_URL)"),
        ([], {"SERVE_PUBLIC_URL": "ftp://x"}, "--public-url (SERVE_PUBLIC_URL)"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_it(argv, env, named, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_the_command_serves_and_drains_its_replicas_on_sigterm(tmp_path):
    import http.client
    import json

    platform = StubPlatform()
    platform.allow("cp_good")
    port = _free_port()
    env = {
        **os.environ,
        "SERVE_NODE_SECRET": NODE_SECRET,
        "SERVE_PLATFORM_URL": platform.url,
        "SERVE_LISTEN": f"127.0.0.1:{port}",
        "SERVE_NODE_NAME": "cli-node",
        "STUB_EVENTS_DIR": str(tmp_path),
        "CONTROLPLANE_DATA_DIR": str(tmp_path / "data"),
    }
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.serve",
            "--replica-command",
            f"{sys.executable} {STUB_REPLICA}",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        platform.answer["replicas"] = [replica_spec("c1")]
        wait_for(
            lambda: (
                platform.reports
                and [r["state"] for r in platform.reports[-1]["replicas"]] == ["ready"]
            ),
            what="c1 ready",
        )
        assert platform.reports[-1]["url"] == f"http://cli-node:{port}"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request(
            "POST",
            "/p/acme/chat/v1/completions",
            body=b'{"prompt": "hi"}',
            headers={"Authorization": "Bearer cp_good", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["replica_id"] == "c1"
        connection.close()
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 0
        assert (tmp_path / "c1.drained").exists()
        assert platform.reports[-1]["replicas"][0]["state"] == "stopped"
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        platform.close()
    assert "serve node cli-node" in node.stderr.read()


def test_a_bad_value_exits_2_from_the_command():
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "workers.serve", "--device", "tpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--device (SERVE_DEVICE)='tpu' must be one of cpu, cuda" in result.stderr
    assert time.monotonic() - started < 30
