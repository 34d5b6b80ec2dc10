"""On a multi-GPU box each cuda replica is pinned to one GPU (CUDA_VISIBLE_DEVICES of its
process), the least used first, and keeps it across restarts."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.workers.serve.node_stubs import FAST, STUB_REPLICA, replica_spec, wait_for
from workers.serve.__main__ import parse_args
from workers.serve.protocol import ReplicaSpec
from workers.serve.supervisor import Supervisor


def _gpu_of(pid: int) -> str | None:
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [
        v.split(b"=", 1)[1].decode() for v in variables if v.startswith(b"CUDA_VISIBLE_DEVICES=")
    ]
    return found[0] if found else None


def _state(supervisor: Supervisor, replica_id: str) -> str | None:
    replica = supervisor.replica(replica_id)
    return None if replica is None else str(replica.state)


def _pid(supervisor: Supervisor, replica_id: str) -> int:
    return supervisor.replica(replica_id).process.pid


def _spec(replica_id: str, device: str) -> ReplicaSpec:
    return ReplicaSpec.from_dict(replica_spec(replica_id, device=device))


@pytest.mark.slow
def test_cuda_replicas_are_spread_over_the_gpus_and_keep_theirs(tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_EVENTS_DIR", str(tmp_path))
    supervisor = Supervisor(
        node_name="gpu-box",
        command=[sys.executable, str(STUB_REPLICA)],
        internal_secret="internal-gpu-box",
        workdir=tmp_path / "node",
        config=FAST,
        gpus=["0", "1"],
    )
    supervisor.start()
    try:
        supervisor.apply([_spec("a", "cuda"), _spec("b", "cuda"), _spec("c", "cpu")])
        for replica_id in "abc":
            wait_for(
                lambda r=replica_id: _state(supervisor, r) == "ready", what=f"{replica_id} ready"
            )
        pids = {r: _pid(supervisor, r) for r in "abc"}
        assert {_gpu_of(pids["a"]), _gpu_of(pids["b"])} == {"0", "1"}
        assert _gpu_of(pids["c"]) is None  # a cpu replica is not pinned
        before = _gpu_of(pids["a"])
        os.kill(pids["a"], signal.SIGKILL)
        wait_for(
            lambda: _state(supervisor, "a") == "ready" and _pid(supervisor, "a") != pids["a"],
            what="a restarted",
        )
        assert _gpu_of(_pid(supervisor, "a")) == before
    finally:
        supervisor.stop()


def test_the_gpus_come_from_the_option_the_environment_or_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("SERVE_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert parse_args(["--device", "cuda"]).gpus == ["2", "3"]
    monkeypatch.setenv("SERVE_GPUS", "0, 1")
    assert parse_args(["--device", "cuda"]).gpus == ["0", "1"]
    assert parse_args(["--device", "cuda", "--gpus", "5"]).gpus == ["5"]
    with pytest.raises(SystemExit):
        parse_args(["--gpus", "0;rm"])
