"""The serve node secret: what a node shows the platform, and the platform a node.

`SERVE_NODE_SECRET` in the environment wins (compose gives the same value to the web
service and every serve node). Without it, both sides read `<data dir>/serve-node-secret`,
created on first use (0600): the embedded default, where web and node share one disk.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from workers.config import data_dir as default_data_dir

FILE_NAME = "serve-node-secret"


def node_secret(data_dir: Path | None = None) -> str:
    from_env = os.environ.get("SERVE_NODE_SECRET", "").strip()
    if from_env:
        return from_env
    path = (data_dir or default_data_dir()) / FILE_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    try:
        # O_EXCL: when two processes race to create it, one wins and the other reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
