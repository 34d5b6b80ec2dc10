"""The folder where Django spools request bodies of uploads, and the sweep of what is left.

A file sent to the upload API or page is written by Django to FILE_UPLOAD_TEMP_DIR while
it arrives and deleted when the request ends. A web worker killed mid-request (SIGKILL,
the OOM killer, a gunicorn timeout) never deletes it: each leaves up to UPLOAD_MAX_BYTES
behind. Uploads get a folder of their own under the data dir (not the shared TMPDIR), so
these files can be found and removed without guessing which temp files are ours:

- at process start (`UploadsConfig.ready`): every file no live process holds open;
- in the reaper (`control.reap_abandoned_uploads`): files not written for
  UPLOAD_TEMP_MAX_AGE that no live process holds open.

A live upload's file is open in its worker and its mtime moves with every chunk, so
neither rule touches it. Where /proc is not readable (not Linux) only the age counts, and
deleting a file still open is harmless there too: the writer keeps its descriptor and
Django tolerates the missing name when it closes the file.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

UPLOAD_TEMP_MAX_AGE = timedelta(hours=1)


def upload_temp_dir() -> Path:
    return Path(settings.FILE_UPLOAD_TEMP_DIR)


def upload_temp_dir_ensure() -> Path:
    """Create the folder (owner-only: uploads may hold anyone's data)."""
    folder = upload_temp_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise ImproperlyConfigured(
            f"cannot create the upload temp folder {folder}: {error}; "
            "point CONTROLPLANE_DATA_DIR at a writable folder"
        ) from error
    return folder


def _files_held_open() -> set[tuple[int, int]] | None:
    """(device, inode) of every file some visible process has open; None without /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    held = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            descriptors = os.listdir(proc / pid / "fd")
        except OSError:  # gone, or another user's process
            continue
        for fd in descriptors:
            try:
                st = os.stat(proc / pid / "fd" / fd)
            except OSError:
                continue
            held.add((st.st_dev, st.st_ino))
    return held


def upload_temp_files_sweep(*, at_start: bool = False, now: float | None = None) -> list[Path]:
    """Remove upload temp files nobody is writing; returns the paths removed."""
    folder = upload_temp_dir()
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    cutoff = now - UPLOAD_TEMP_MAX_AGE.total_seconds()
    held = _files_held_open()
    removed = []
    for entry in os.scandir(folder):
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if held is not None and (st.st_dev, st.st_ino) in held:
            continue
        # At start, with /proc, "held by nobody" is enough: its writer is gone.
        if not (at_start and held is not None) and st.st_mtime > cutoff:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # its request finished and removed it meanwhile
        removed.append(Path(entry.path))
    if removed:
        logger.warning("removed %d stale upload temp file(s) from %s", len(removed), folder)
    return removed
