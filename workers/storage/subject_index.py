"""A raw upload's subject index, built from the store (called by the platform's control
worker, `controlplane.datasets.subject_index`).

It lives here, not in platform/, because it runs the engine's index builder: the platform's
source never imports the engine (tests/platform/test_no_engine_imports.py), and the engine
is imported only when an index is built, so the web process never loads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from workers.storage.base import ObjectStore


def build_raw_subject_index(
    store: ObjectStore,
    subject_field: str,
    files: Iterable[tuple[str, str, str]],
    key: bytes,
    work: Path,
) -> dict:
    """One streaming pass per (name, object key, sha256) straight from the store; writes
    the index files into ``work`` and returns their manifest."""
    from engine.data.raw_subject_index import RawIndexBuilder, open_lines

    builder = RawIndexBuilder(subject_field, key)
    for name, object_key, sha256 in files:
        with store.open_stream(object_key) as raw, open_lines(raw, name) as lines:
            builder.add_lines(name, lines, sha256)
    return builder.write(work)
