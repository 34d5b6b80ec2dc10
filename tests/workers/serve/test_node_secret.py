"""The serve node secret: the environment's, else one file made once and shared."""

from __future__ import annotations

import stat

from workers.serve.secret import FILE_NAME, node_secret


def test_the_environment_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVE_NODE_SECRET", "from-env")
    assert node_secret(tmp_path) == "from-env"
    assert not (tmp_path / FILE_NAME).exists()


def test_without_it_one_file_is_made_private_and_read_again(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVE_NODE_SECRET", raising=False)
    first = node_secret(tmp_path)
    assert len(first) >= 40
    path = tmp_path / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert node_secret(tmp_path) == first
