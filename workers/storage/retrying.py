"""An object store that rides out short outages: bounded retries with exponential backoff.

    store = RetryingObjectStore(get_object_store(), patience_seconds=60)

Wraps any ObjectStore. Only transient errors are retried (connection refused or reset,
timeouts, 5xx answers: the server restarting, a network blip); a missing object, an
existing key, a bad key or a stream of the wrong length fail at once, because trying
again cannot change them. When the patience runs out, `StorageUnavailableError` carries
the last error: an infrastructure failure, which the worker reports as retryable.

Retries are safe because keys are never overwritten: a put whose answer was lost (the
object is stored, the response is not) is recognised on the next try by its sha256; a
download or a listing that breaks mid-way goes on from where it stopped.

Used by the workers, never by the web process: a request must not hang for a minute.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import BinaryIO, TypeVar

import urllib3.exceptions

from workers.storage.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectInfo,
    ObjectStore,
    ObjectVersion,
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
from workers.storage.streams import Readable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PATIENCE_SECONDS = 60.0
# S3 error codes a server answers while it is overloaded or restarting.
_TRANSIENT_S3_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted"}
)
# Errors that say something about the request, not about the server's health.
_PERMANENT = (
    ObjectNotFoundError,
    ObjectExistsError,
    InvalidKeyError,
    StreamLengthError,
    PresignedURLError,
)
_TRANSIENT_NETWORK = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,
    socket.timeout,
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.MaxRetryError,  # urllib3 gave up on connection errors or 5xx
    urllib3.exceptions.ResponseError,
)


class StorageUnavailableError(StorageError):
    """The store kept failing with transient errors for the whole patience."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is the kind of failure that passes by itself."""
    if isinstance(error, StorageUnavailableError):
        return True
    if isinstance(error, _PERMANENT):
        return False
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT_NETWORK):
            return True
        if _is_server_error(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_server_error(error: BaseException) -> bool:
    """An S3 error answer of the 5xx kind (minio's S3Error / ServerError, by duck type)."""
    code = getattr(error, "code", None)
    if isinstance(code, str) and code in _TRANSIENT_S3_CODES:
        return True
    status = getattr(error, "status_code", None)
    if status is None:
        response = getattr(error, "response", None)
        status = getattr(response, "status", None)
    return isinstance(status, int) and 500 <= status < 600


class RetryingObjectStore(ObjectStore):
    def __init__(
        self,
        inner: ObjectStore,
        *,
        patience_seconds: float = DEFAULT_PATIENCE_SECONDS,
        first_delay_seconds: float = 0.5,
        max_delay_seconds: float = 8.0,
    ) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.bucket = inner.bucket
        self.patience_seconds = patience_seconds
        self.first_delay_seconds = first_delay_seconds
        self.max_delay_seconds = max_delay_seconds

    def _retrying(self, action: str, call: Callable[[], T]) -> T:
        """`call()`, again after each transient error until the patience is spent."""
        deadline = time.monotonic() + self.patience_seconds
        delay = self.first_delay_seconds
        tries = 0
        while True:
            tries += 1
            try:
                result = call()
            except StorageError as error:
                self._wait_or_give_up(action, error, tries, deadline, delay)
                delay = min(delay * 2, self.max_delay_seconds)
                continue
            if tries > 1:
                log.info("object store: %s succeeded after %d tries", action, tries)
            return result

    def _wait_or_give_up(
        self, action: str, error: StorageError, tries: int, deadline: float, delay: float
    ) -> None:
        if not is_transient(error):
            raise error
        left = deadline - time.monotonic()
        if left <= 0:
            raise StorageUnavailableError(
                f"{action}: the object store kept failing for {self.patience_seconds:.0f} s "
                f"({tries} tries): {error}"
            ) from error
        if tries == 1:
            log.warning(
                "object store: %s failed, retrying for up to %.0f s: %s", action, left, error
            )
        time.sleep(min(delay, left))

    # -- writes ----------------------------------------------------------------------

    def put_stream(
        self,
        key: str,
        stream: BinaryIO | Readable | Iterable[bytes],
        *,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        start = _position(stream)

        def put() -> StoredObject:
            return self.inner.put_stream(
                key, stream, length=length, content_type=content_type, metadata=metadata
            )

        if start is None:  # a stream read once cannot be sent twice
            return put()
        tries = 0

        def put_again() -> StoredObject:
            nonlocal tries
            tries += 1
            stream.seek(start)  # type: ignore[union-attr]
            try:
                return put()
            except ObjectExistsError:
                if tries == 1:
                    raise
                # An earlier try stored it but its answer was lost on the way back.
                return self._stored_already(key, stream, start)

        return self._retrying(f"put {key}", put_again)

    def _stored_already(self, key: str, stream, start: int) -> StoredObject:
        stream.seek(start)
        digest, size = hashlib.sha256(), 0
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
        info = self.inner.stat(key)
        if info.sha256 != digest.hexdigest() or info.size != size:
            raise ObjectExistsError(
                f"{key} already exists in {self.bucket} with other content; "
                "write changes under a new key"
            )
        return StoredObject(key=key, size=size, sha256=info.sha256, version_id=info.version_id)

    def copy(self, src_key: str, dst_key: str) -> StoredObject:
        tries = 0

        def copy_again() -> StoredObject:
            nonlocal tries
            tries += 1
            try:
                return self.inner.copy(src_key, dst_key)
            except ObjectExistsError:
                if tries == 1:
                    raise
                # An earlier try copied it but its answer was lost on the way back.
                source, copied = self.inner.stat(src_key), self.inner.stat(dst_key)
                if (copied.size, copied.sha256) != (source.size, source.sha256):
                    raise
                return StoredObject(
                    key=dst_key,
                    size=copied.size,
                    sha256=copied.sha256 or "",
                    version_id=copied.version_id,
                )

        return self._retrying(f"copy {src_key} to {dst_key}", copy_again)

    def delete(self, key: str) -> int:
        return self._retrying(f"delete {key}", lambda: self.inner.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        return self._retrying(f"delete under {prefix}", lambda: self.inner.delete_prefix(prefix))

    def delete_all_versions(self, key: str) -> list[str]:
        """Each try lists what is left and deletes it, so a try that failed mid-way is
        finished by the next; the ids of every try are returned together."""
        deleted: list[str] = []

        def delete_rest() -> list[str]:
            # Listed here, not by the inner store, so that ids a failing try deleted
            # before it broke are still reported.
            left = [v.version_id for v in self.inner.list_versions(key)]
            deleted.extend(i for i in left if i not in deleted)
            self.inner.delete_all_versions(key)
            return deleted

        return self._retrying(f"delete the versions of {key}", delete_rest)

    # -- reads -----------------------------------------------------------------------

    def open_stream(self, key: str, *, version_id: str | None = None) -> BinaryIO:
        return self._retrying(
            f"get {key}", lambda: self.inner.open_stream(key, version_id=version_id)
        )

    def iter_chunks(
        self, key: str, chunk_size: int = 1024 * 1024, *, version_id: str | None = None
    ) -> Iterator[bytes]:
        """Chunks of the object; a read that breaks re-opens it and skips what was read."""
        offset = 0
        deadline = time.monotonic() + self.patience_seconds
        delay, tries = self.first_delay_seconds, 0
        while True:
            tries += 1
            try:
                with self.inner.open_stream(key, version_id=version_id) as stream:
                    _skip(stream, offset, key)
                    while chunk := stream.read(chunk_size):
                        offset += len(chunk)
                        yield chunk
                return
            except StorageError as error:
                self._wait_or_give_up(f"read {key} at byte {offset}", error, tries, deadline, delay)
                delay = min(delay * 2, self.max_delay_seconds)

    def get_bytes(self, key: str, *, version_id: str | None = None, **kwargs) -> bytes:
        return self._retrying(
            f"get {key}", lambda: self.inner.get_bytes(key, version_id=version_id, **kwargs)
        )

    def get_range(
        self, key: str, offset: int, length: int, *, version_id: str | None = None
    ) -> bytes:
        return self._retrying(
            f"get bytes {offset}+{length} of {key}",
            lambda: self.inner.get_range(key, offset, length, version_id=version_id),
        )

    def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        return self._retrying(f"stat {key}", lambda: self.inner.stat(key, version_id=version_id))

    def list_versions(self, key_or_prefix: str) -> list[ObjectVersion]:
        return self._retrying(
            f"list versions of {key_or_prefix or '/'}",
            lambda: self.inner.list_versions(key_or_prefix),
        )

    def get_version(self, key: str, version_id: str) -> BinaryIO:
        return self.open_stream(key, version_id=version_id)

    def exists(self, key: str) -> bool:
        return self._retrying(f"stat {key}", lambda: self.inner.exists(key))

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects in key order; a listing that breaks starts again after the last key seen."""
        last_key: str | None = None
        deadline = time.monotonic() + self.patience_seconds
        delay, tries = self.first_delay_seconds, 0
        while True:
            tries += 1
            try:
                for info in self.inner.list(prefix, recursive=recursive):
                    if last_key is not None and info.key <= last_key:
                        continue
                    last_key = info.key
                    yield info
                return
            except StorageError as error:
                self._wait_or_give_up(f"list {prefix or '/'}", error, tries, deadline, delay)
                delay = min(delay * 2, self.max_delay_seconds)

    # -- presigned URLs and client-side multipart: the web tier's, passed through ---------

    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self.inner.presigned_get_url(key, expires)

    def presigned_put_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self.inner.presigned_put_url(key, expires)

    def multipart_create(self, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        return self.inner.multipart_create(key, content_type)

    def presigned_part_url(
        self, key: str, upload_id: str, part_number: int, expires: timedelta = timedelta(hours=1)
    ) -> str:
        return self.inner.presigned_part_url(key, upload_id, part_number, expires)

    def multipart_complete(
        self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]
    ) -> StoredObject:
        return self.inner.multipart_complete(key, upload_id, parts)

    def multipart_abort(self, key: str, upload_id: str) -> None:
        self._retrying(f"abort upload of {key}", lambda: self.inner.multipart_abort(key, upload_id))

    def ensure_bucket(self) -> None:
        self._retrying("create bucket", self.inner.ensure_bucket)

    def location(self) -> StoreLocation:
        return self._retrying("look up the bucket's region", self.inner.location)


def _pass_through(name: str):
    def method(self: RetryingObjectStore, *args, **kwargs):
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


# An operation the interface gains later reaches the wrapped store unretried, instead of
# making the wrapper abstract (and every worker unable to start) until it is listed here.
for _name in ObjectStore.__abstractmethods__ - vars(RetryingObjectStore).keys():
    setattr(RetryingObjectStore, _name, _pass_through(_name))
RetryingObjectStore.__abstractmethods__ = frozenset()


def _position(stream) -> int | None:
    """Where a seekable stream stands now (to send it again from there); None otherwise."""
    try:
        if hasattr(stream, "seekable") and not stream.seekable():
            return None
        return stream.tell()
    except (AttributeError, OSError, ValueError):
        return None


def _skip(stream: BinaryIO, count: int, key: str) -> None:
    left = count
    while left > 0:
        chunk = stream.read(min(left, 8 * 1024 * 1024))
        if not chunk:
            raise StorageError(f"{key} is shorter on a second read than on the first")
        left -= len(chunk)
