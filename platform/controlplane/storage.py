"""The platform's handle on the object store (built once per process from the environment)."""

from __future__ import annotations

from functools import lru_cache

from workers.storage import ObjectStore, get_object_store


@lru_cache(maxsize=1)
def object_store() -> ObjectStore:
    store = get_object_store()
    store.ensure_bucket()
    # Where the bucket is (S3: one request, remembered by the store) is asked now, with
    # the bucket, not later while a new dataset version's rows are locked.
    store.location()
    return store
