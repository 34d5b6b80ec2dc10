"""The object store interface: one API, a local-filesystem backend and an S3 backend.

Keys are server-made (see `keys.py`) and never overwritten; big objects stream in parts
and their sha256 is computed on the way in, so no caller ever holds a whole file.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import BinaryIO

from workers.storage.errors import StorageError
from workers.storage.keys import validate_key
from workers.storage.streams import Readable

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Both backends use S3's limit so a URL that works on a laptop works in production.
MAX_PRESIGN_EXPIRY = timedelta(days=7)
# `get_bytes` is for manifests and small JSON; bigger objects must be streamed.
MAX_GET_BYTES = 64 * 1024 * 1024
# S3 allows 2 KiB of user metadata per object.
MAX_METADATA_BYTES = 2048
# The sha256 is stored by the store itself; a caller may not set it.
SHA256_METADATA_KEY = "sha256"

_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    # None on the local store and on unversioned buckets.
    version_id: str | None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None
    last_modified: datetime
    version_id: str | None
    # S3 listings carry neither content type nor metadata: `stat` a key for those.
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        return self.metadata.get(SHA256_METADATA_KEY)


# The version id S3 gives objects of an unversioned bucket; the local store's one "version".
NULL_VERSION_ID = "null"


@dataclass(frozen=True)
class ObjectVersion:
    """One stored version (or delete marker) of a key, as `list_versions` reports it.

    A versioned bucket keeps every overwritten or deleted object as an old version, and a
    plain delete only adds a delete marker: erasure has to see and delete these by id.
    """

    key: str
    version_id: str
    size: int
    is_latest: bool
    is_delete_marker: bool
    last_modified: datetime | None


@dataclass(frozen=True)
class StoreLocation:
    """Where a store keeps its objects: what a data-residency rule is checked against."""

    backend: str  # "local" or "s3"
    bucket: str
    # S3: the region the server says the bucket is in, not the one configured; "local"
    # for the embedded store (the machine's own disk).
    region: str


@dataclass(frozen=True)
class OpenUpload:
    """A multipart upload that was created and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


def check_metadata(key: str, metadata: dict[str, str] | None) -> dict[str, str]:
    """Lower-case names of letters, digits and '-', printable ASCII values: what S3 keeps intact."""
    checked: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        lowered = name.lower() if isinstance(name, str) else name
        if not isinstance(lowered, str) or not _METADATA_NAME.fullmatch(lowered):
            raise StorageError(
                f"metadata name {name!r} for {key} may only hold letters, digits and '-'"
            )
        if lowered == SHA256_METADATA_KEY:
            raise StorageError(
                f"metadata name {name!r} for {key} is reserved: the store computes the sha256"
            )
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise StorageError(
                f"metadata {name!r} for {key} must be printable ASCII text, got {value!r}"
            )
        checked[lowered] = value
    if sum(len(k) + len(v) for k, v in checked.items()) > MAX_METADATA_BYTES - 100:
        raise StorageError(f"metadata for {key} is larger than S3's {MAX_METADATA_BYTES} bytes")
    return checked


def check_content_type(key: str, content_type: str) -> str:
    # It travels as an HTTP header: CR/LF would inject headers.
    if (
        not isinstance(content_type, str)
        or not content_type
        or not _HEADER_VALUE.fullmatch(content_type)
    ):
        raise StorageError(f"content type {content_type!r} for {key} must be printable ASCII text")
    return content_type


def check_expiry(expires: timedelta) -> timedelta:
    if not isinstance(expires, timedelta) or not (
        timedelta(seconds=1) <= expires <= MAX_PRESIGN_EXPIRY
    ):
        raise StorageError(
            f"presigned URL expiry {expires!r} must be a timedelta between 1 second and 7 days"
        )
    return expires


def check_range(key: str, offset: int, length: int) -> None:
    for name, value in (("offset", offset), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise StorageError(f"{name} of a ranged read of {key} must be an integer >= 0")
    if not 1 <= length <= MAX_GET_BYTES:
        raise StorageError(f"a ranged read of {key} takes 1 to {MAX_GET_BYTES} bytes, not {length}")


def range_error(key: str, offset: int, length: int) -> StorageError:
    return StorageError(f"{key} has no bytes {offset}..{offset + length - 1}: it is shorter")


class ObjectStore(ABC):
    """One bucket of immutable objects. Every method validates the key it is given."""

    backend: str
    bucket: str

    @abstractmethod
    def put_stream(
        self,
        key: str,
        stream: BinaryIO | Readable | Iterable[bytes],
        *,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        """Store a stream (a file-like or an iterable of byte chunks) under a new key.

        Raises ObjectExistsError if the key holds an object. `length`, when given, must be
        exact. A stream that raises mid-way leaves no object behind; its exception
        propagates unchanged.
        """

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        return self.put_stream(
            key, io.BytesIO(data), length=len(data), content_type=content_type, metadata=metadata
        )

    def copy(self, src_key: str, dst_key: str) -> StoredObject:
        """Copy an object to a new key inside the store, never through the caller.

        The copy keeps the source's content type and metadata. Its sha256 is hashed from
        the bytes copied (local) or carried over from the source's record (S3: the bytes
        never leave the server); a reader that must be sure reads the copy back
        (controlplane/registry/integrity.py).
        Raises ObjectExistsError if `dst_key` holds an object and ObjectNotFoundError if
        `src_key` holds none. Not abstract so that stores written before it still build;
        both backends implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot copy objects")

    @abstractmethod
    def open_stream(self, key: str, *, version_id: str | None = None) -> BinaryIO:
        """A readable, closeable file object; use it in a `with` block."""

    def iter_chunks(
        self, key: str, chunk_size: int = 1024 * 1024, *, version_id: str | None = None
    ) -> Iterator[bytes]:
        with self.open_stream(key, version_id=version_id) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    def get_bytes(
        self, key: str, *, version_id: str | None = None, max_size: int = MAX_GET_BYTES
    ) -> bytes:
        with self.open_stream(key, version_id=version_id) as stream:
            data = stream.read(max_size + 1)
        if len(data) > max_size:
            raise StorageError(
                f"{key} is larger than {max_size} bytes; stream it with iter_chunks()"
            )
        return data

    def get_range(
        self, key: str, offset: int, length: int, *, version_id: str | None = None
    ) -> bytes:
        """Exactly `length` bytes of the object from byte `offset` (one ranged GET on S3).

        For reading one record out of a bigger object (the inference archive's gzip
        members). A range that runs past the end of the object is a StorageError, never a
        short answer: the caller asked for a span it believes exists. This default reads
        the stream up to the range (correct on any store); both backends override it.
        """
        check_range(key, offset, length)
        with self.open_stream(key, version_id=version_id) as stream:
            left = offset
            while left > 0:
                skipped = stream.read(min(left, 1024 * 1024))
                if not skipped:
                    raise range_error(key, offset, length)
                left -= len(skipped)
            data = stream.read(length)
        if len(data) != length:
            raise range_error(key, offset, length)
        return data

    @abstractmethod
    def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        """Raises ObjectNotFoundError when there is no such object."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects under a folder prefix in key order; `recursive=False` stays in that folder."""

    @abstractmethod
    def delete(self, key: str) -> int:
        """Remove the object with every stored version; returns how many versions went.

        Deleting a missing key is not an error (erasure must be repeatable).
        """

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object and version under a folder prefix; returns how many went."""

    # -- every stored version (erasure: versioned buckets keep old ones) ---------------
    # Not abstract so that stores written before them still build; both backends and the
    # retrying wrapper implement them.

    def list_versions(self, key_or_prefix: str) -> list[ObjectVersion]:
        """Every stored version and delete marker of one key, or of every key under a
        folder prefix (one ending in "/", or "" for the whole bucket), in key order.

        The local store keeps no versions: one version "null" per existing object.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list object versions")

    def delete_all_versions(self, key: str) -> list[str]:
        """Delete every version and delete marker of `key` by version id; returns the ids.

        Idempotent: a key with nothing left deletes nothing and is not an error. A store
        that fails mid-way raises StorageError; calling again finishes the work (what the
        failed call deleted is then no longer listed, so a caller that must account for
        every id lists them first with `list_versions`).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot delete object versions")

    def get_version(self, key: str, version_id: str) -> BinaryIO:
        """One stored version's bytes as a stream (use it in a `with` block)."""
        return self.open_stream(key, version_id=version_id)

    @abstractmethod
    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str: ...

    @abstractmethod
    def presigned_put_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str: ...

    # -- client-side multipart upload (browsers and API clients send parts directly) ----
    #
    # multipart_create -> presigned_part_url per part (the client PUTs each and keeps the
    # ETag answered) -> multipart_complete, which assembles the object, reads it back to
    # compute its size and sha256 (the client's claim is checked, never trusted) and
    # stores the sha256 as every other object's. multipart_abort drops the parts.

    @abstractmethod
    def multipart_create(self, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Open a multipart upload of a new object; returns the upload id."""

    @abstractmethod
    def presigned_part_url(
        self, key: str, upload_id: str, part_number: int, expires: timedelta = timedelta(hours=1)
    ) -> str:
        """A URL that accepts one PUT of part `part_number` (1-based) and answers an ETag."""

    @abstractmethod
    def multipart_complete(
        self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]
    ) -> StoredObject:
        """Assemble the parts [(number, etag)] in order; the object then exists with its sha256."""

    @abstractmethod
    def multipart_abort(self, key: str, upload_id: str) -> None:
        """Drop an open upload and its parts; a no-op when it is already gone."""

    def multipart_list(self, prefix: str = "") -> Iterator[OpenUpload]:
        """Open multipart uploads under a folder prefix, for sweeping those nobody owns.

        Not abstract so that wrappers written before it (a retrying store) still build;
        both backends implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list open multipart uploads")

    @abstractmethod
    def ensure_bucket(self) -> None:
        """Create the bucket if missing (and turn versioning on where the backend has it)."""

    @abstractmethod
    def location(self) -> StoreLocation:
        """The backend, bucket and region the objects are stored in (looked up once)."""

    def _key(self, key: str) -> str:
        return validate_key(key)
