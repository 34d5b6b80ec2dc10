"""Stream adapters shared by the backends: hashing on the fly, iterables as readers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Protocol

from workers.storage.errors import StreamLengthError


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class IterableReader:
    """A `read(n)` view of an iterable of byte chunks (a generator, a Django StreamingHttpResponse)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._pending = memoryview(chunk)
        if size < 0 or size >= len(self._pending):
            out, self._pending = bytes(self._pending), memoryview(b"")
            return out
        out, self._pending = bytes(self._pending[:size]), self._pending[size:]
        return out


def as_reader(stream: BinaryIO | Readable | Iterable[bytes] | bytes) -> Readable:
    if isinstance(stream, bytes | bytearray | memoryview):
        raise TypeError("put_stream() takes a stream; use put_bytes() for bytes")
    if isinstance(stream, str):
        raise TypeError("put_stream() takes a binary stream, not str; encode the text first")
    if callable(getattr(stream, "read", None)):
        return stream  # type: ignore[return-value]
    return IterableReader(stream)  # type: ignore[arg-type]


class HashingReader:
    """Reads a stream through, computing its sha256 and size as the bytes pass.

    `read(n)` fills up to n bytes before returning, because the S3 SDK appends part
    buffers with `+=` and would go quadratic on a stream of small chunks. An exception
    raised by the source stream is remembered in `source_error`, so a backend can tell
    "the caller's stream broke" from "the network broke" and re-raise the former as is.
    """

    def __init__(self, source: Readable, *, expected_length: int | None = None) -> None:
        if expected_length is not None and (
            isinstance(expected_length, bool)
            or not isinstance(expected_length, int)
            or expected_length < 0
        ):
            raise StreamLengthError(
                f"declared length {expected_length!r} must be a non-negative integer or None"
            )
        self._source = source
        self._digest = hashlib.sha256()
        self.size = 0
        self.expected_length = expected_length
        self.source_error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted != 0:
            try:
                chunk = self._source.read(wanted if wanted > 0 else 1 << 20)
            except BaseException as exc:
                self.source_error = exc
                raise
            if not chunk:
                self._check_complete()
                break
            self._account(chunk)
            parts.append(chunk)
            if wanted > 0:
                wanted -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _account(self, data: bytes) -> None:
        self._digest.update(data)
        self.size += len(data)
        if self.expected_length is not None and self.size > self.expected_length:
            self._fail(
                f"stream holds more than the declared length of {self.expected_length} bytes"
            )

    def _check_complete(self) -> None:
        if self.expected_length is not None and self.size != self.expected_length:
            self._fail(
                f"stream ended after {self.size} bytes; the declared length is {self.expected_length}"
            )

    def _fail(self, message: str) -> None:
        self.source_error = StreamLengthError(message)
        raise self.source_error

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
