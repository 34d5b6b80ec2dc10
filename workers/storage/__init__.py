"""Object storage for the platform and the workers: one interface, two backends.

from workers.storage import get_object_store, project_key

store = get_object_store()           # from the OBJECT_STORE_* environment
key = project_key(7, "datasets", "3", "shard-00000.jsonl.zst")
stored = store.put_stream(key, open(path, "rb"))   # -> StoredObject(key, size, sha256, version_id)
for chunk in store.iter_chunks(key): ...
"""

from __future__ import annotations

from workers.config import ObjectStoreConfig, object_store_config
from workers.storage.base import (
    NULL_VERSION_ID,
    ObjectInfo,
    ObjectStore,
    ObjectVersion,
    OpenUpload,
    StoredObject,
    StoreLocation,
)
from workers.storage.errors import (
    InvalidKeyError,
    ObjectExistsError,
    ObjectNotFoundError,
    PresignedURLError,
    StorageError,
    StreamLengthError,
)
from workers.storage.keys import project_key, project_prefix, validate_key
from workers.storage.local import LocalObjectStore
from workers.storage.s3 import S3ObjectStore

__all__ = [
    "NULL_VERSION_ID",
    "InvalidKeyError",
    "LocalObjectStore",
    "ObjectExistsError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectVersion",
    "OpenUpload",
    "PresignedURLError",
    "S3ObjectStore",
    "StorageError",
    "StoreLocation",
    "StoredObject",
    "StreamLengthError",
    "get_object_store",
    "project_key",
    "project_prefix",
    "validate_key",
]


def get_object_store(config: ObjectStoreConfig | None = None) -> ObjectStore:
    """The store the configuration names: S3 when an endpoint is set, else the local folder."""
    config = config or object_store_config()
    if config.endpoint:
        return S3ObjectStore(
            config.endpoint,
            config.bucket,
            access_key=config.access_key,
            secret_key=config.secret_key,
            region=config.region,
            secure=config.secure,
            public_endpoint=config.public_endpoint,
            public_secure=config.public_secure,
        )
    return LocalObjectStore(
        config.root,
        config.bucket,
        public_base_url=config.public_base_url,
        signing_key=config.signing_key,
    )
