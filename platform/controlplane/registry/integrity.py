"""Is a stored object still the bytes a worker reported? Read back and hashed, in chunks.

Used when a version is registered (the copy is checked against the job's artifact
record) and before a version is exported (a tampered or rotted object is refused,
never handed out). Memory stays at one chunk whatever the object's size.
"""

from __future__ import annotations

import hashlib

from workers.storage import ObjectStore
from workers.storage.errors import ObjectNotFoundError

CHUNK_BYTES = 4 * 1024 * 1024


def object_problem(store: ObjectStore, key: str, *, sha256: str, size: int) -> str | None:
    """None when `key` holds exactly `size` bytes hashing to `sha256`; else what is wrong.

    Store outages (StorageError other than a missing object) propagate: "cannot tell"
    must not read as "corrupt".
    """
    digest = hashlib.sha256()
    length = 0
    try:
        for chunk in store.iter_chunks(key, CHUNK_BYTES):
            digest.update(chunk)
            length += len(chunk)
    except ObjectNotFoundError:
        return f"{key} is missing from the object store"
    if length != size:
        return f"{key} holds {length} bytes, {size} were recorded"
    if digest.hexdigest() != sha256:
        return f"{key} has sha256 {digest.hexdigest()}, {sha256} was recorded"
    return None
