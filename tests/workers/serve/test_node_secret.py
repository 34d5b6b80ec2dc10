"""The serve node secret as the node reads it: the environment's, else the shared file."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from workers.serve.secret import FILE_NAME, serve_node_secret

ROOT = Path(__file__).resolve().parents[3]


def test_the_environment_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVE_NODE_SECRET", "x" * 40)
    assert serve_node_secret(tmp_path) == "x" * 40
    assert not (tmp_path / FILE_NAME).exists()


def test_without_it_one_file_is_made_private_and_read_again(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVE_NODE_SECRET", raising=False)
    first = serve_node_secret(tmp_path)
    assert len(first) >= 40
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600
    assert serve_node_secret(tmp_path) == first


def test_a_short_secret_stops_the_node_with_a_usage_error(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "SERVE_NODE_SECRET": "short",
        "CONTROLPLANE_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "workers.serve", "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SERVE_NODE_SECRET must be at least 32 characters" in result.stderr
