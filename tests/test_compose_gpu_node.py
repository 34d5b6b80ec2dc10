"""compose/gpu-node.yaml, a GPU machine joining a platform elsewhere, as docker-compose
resolves it; and the main file's broker, reachable from such machines only when asked."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed")
PLATFORM = {
    "CELERY_BROKER_URL": "redis://10.0.0.5:6379/0",
    "OBJECT_STORE_ENDPOINT": "10.0.0.5:9000",
    "MLFLOW_TRACKING_URI": "http://10.0.0.5:5000",
    "WORKER_RENDEZVOUS_HOST": "10.0.0.21",
}


def resolve(path: str, **env: str) -> subprocess.CompletedProcess:
    bare = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [COMPOSE, "-f", str(ROOT / path), "config"],
        cwd=ROOT,
        env={**bare, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_gpu_node_joins_the_platform_it_is_pointed_at():
    result = resolve("compose/gpu-node.yaml", **PLATFORM)
    assert result.returncode == 0, result.stderr
    node = yaml.safe_load(result.stdout)["services"]["gpu-node"]
    env = node["environment"]
    assert {key: env[key] for key in PLATFORM} == PLATFORM
    assert "DATABASE_URL" not in env  # workers never hold database credentials
    assert node["network_mode"] == "host"  # the rendezvous and NCCL use the host's address
    assert env["WORKER_RENDEZVOUS_PORT"] == "29400"  # workers/gang.py reads both
    command = " ".join(node["command"])
    assert "-Q gpu" in command and "-n gpu@%h" in command
    devices = node["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_a_gpu_node_without_the_platform_address_is_refused_with_what_to_set():
    result = resolve("compose/gpu-node.yaml")
    assert result.returncode != 0
    assert "set CELERY_BROKER_URL=redis://<platform host>:6379/0" in result.stderr


def test_a_gpu_node_must_say_where_the_others_reach_it():
    address = {key: value for key, value in PLATFORM.items() if key != "WORKER_RENDEZVOUS_HOST"}
    result = resolve("compose/gpu-node.yaml", **address)
    assert result.returncode != 0 and "set WORKER_RENDEZVOUS_HOST=" in result.stderr


def test_the_broker_listens_on_this_machine_unless_told_otherwise():
    def redis_ports(**env: str) -> list:
        result = resolve("compose.yaml", **env)
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)["services"]["redis"]["ports"]

    # docker-compose v1 writes "host:published:target"; v2 a mapping.
    def bind(port) -> tuple[str, str]:
        if isinstance(port, str):
            host, _published, target = port.split(":")
            return host, target.removesuffix("/tcp")
        return port["host_ip"], str(port["target"])

    assert [bind(port) for port in redis_ports()] == [("127.0.0.1", "6379")]
    assert [bind(port) for port in redis_ports(REDIS_BIND="10.0.0.5")] == [("10.0.0.5", "6379")]
