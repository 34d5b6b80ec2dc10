"""The secret serve nodes and the platform share (no Django here: both sides import it).

`SERVE_NODE_SECRET` from the environment when set. Otherwise (the embedded default, one
machine) a random secret made once and kept in `<DATA_DIR>/serve-node-secret`, mode
0600: the platform and every node started on that machine read the same file, so
nothing needs configuring. The file appears atomically (written under a temporary name,
then linked into place, which fails if another process got there first), so a process
never reads it half-written.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from workers.config import ConfigError, data_dir

ENV_NAME = "SERVE_NODE_SECRET"
FILE_NAME = "serve-node-secret"
MIN_LENGTH = 32  # characters; the generated one is 43 (256 random bits)


def serve_node_secret(folder: Path | None = None) -> str:
    """The shared secret: the environment's, or the data directory's file (made if absent)."""
    value = os.environ.get(ENV_NAME, "")
    if value:
        if len(value) < MIN_LENGTH:
            raise ConfigError(f"{ENV_NAME} must be at least {MIN_LENGTH} characters")
        return value
    path = (folder or data_dir()) / FILE_NAME
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(temporary, path)  # atomic; FileExistsError: another process won
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
        return _read(path)
    except OSError as error:
        raise ConfigError(
            f"{ENV_NAME} is not set and {path} cannot be created ({error}); set {ENV_NAME}"
        ) from None


def _read(path: Path) -> str:
    value = path.read_text().strip()
    if len(value) < MIN_LENGTH:
        raise ConfigError(f"{path} holds no usable secret; delete it or set {ENV_NAME}")
    return value
