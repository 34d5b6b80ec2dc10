"""The inference archive, replica side: every request and its answer, in the object store.

    archiver = Archiver(store, spec, ControlQueueIndexSink(celery_app), node="node-1")
    archiver.start()
    archiver.record(record)      # from the request path: O(1), never blocks, never raises
    archiver.close(timeout=30)   # SIGTERM: flush everything, then exit

`record()` only appends to an in-memory buffer. A background thread, every
`window_seconds` (sooner when `flush_records` are waiting), turns what is buffered into
one object per window:

    projects/<p>/inference/<deployment>/<day>/<replica>/<start ms>-<life>-<seq>.jsonl.gz

Each record is one JSON line compressed as its own gzip member; concatenated members are a
valid .gz file (`zcat` reads the whole window) and each member decodes alone, so the
platform reads one record with one ranged GET of [offset, offset + length) from its
`IndexEntry`. The object is written with one put (atomic on both stores: never
half-written), and only THEN is its `ArchiveIndex` sent through the sink (the control
queue): the index never points at bytes that are not there.

Failure behaviour, stated once:
- Store down: the window's encoded object is kept and the put retried, with backoff
  (FIRST_RETRY_SECONDS doubling to MAX_RETRY_SECONDS), under the same key; a retry that
  finds the key already holding the same bytes (the earlier answer was lost) counts as
  stored. Memory stays bounded: at most `max_buffer_records` records and
  `max_buffer_bytes` encoded bytes wait; past either cap the OLDEST records are dropped,
  counted in `stats()["dropped"]` and logged. `record()` itself caps the not-yet-encoded
  buffer at `max_buffer_records` (dropping its oldest), so a put that hangs cannot grow
  memory without bound either.
- Broker down: the index of a stored object is kept and sent again at the next flush
  (at most MAX_UNSENT_INDEXES of them; past that the oldest index is dropped and logged:
  its object is then an orphan, removed by the platform's purge of its day folder).
- SIGTERM: `close(timeout)` flushes everything still buffered (objects, then indexes).
  It may be called from a signal handler (the locks are re-entrant).

Give it the plain store, not a RetryingObjectStore: it retries by itself, and a wrapper's
minute of patience would only hold its thread inside one put.
- kill -9: what was buffered and not yet stored is lost, i.e. at most the current window
  (plus whatever an outage had kept waiting). Stored objects whose index was not sent yet
  are not lost, only unindexed (the platform's day-folder purge removes them in time).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import gzip
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.serve.protocol import (
    ARCHIVE_INDEX_TASK,
    ArchiveIndex,
    IndexEntry,
    ReplicaSpec,
    archive_key,
    subject_hash,
    to_dict,
)
from workers.storage.base import ObjectStore
from workers.storage.errors import ObjectExistsError

log = logging.getLogger(__name__)

# The thread flushes early once this many records wait (a busy replica's windows stay small).
DEFAULT_FLUSH_RECORDS = 2000
# One object holds at most this many records / encoded bytes; a bigger window is split.
MAX_OBJECT_RECORDS = 2000
MAX_OBJECT_BYTES = 32 * 1024 * 1024
# What may wait in memory while the store is down (see the module docstring).
DEFAULT_MAX_BUFFER_RECORDS = 50_000
DEFAULT_MAX_BUFFER_BYTES = 256 * 1024 * 1024
MAX_UNSENT_INDEXES = 10_000
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
# gzip level 6 (gzip's default) costs ~3x level 1 for ~15% less on JSON: level 1 keeps one
# replica's thread far above 1,000 records/s.
GZIP_LEVEL = 1
CONTENT_TYPE = "application/gzip"


class IndexSink(Protocol):
    def send(self, index: ArchiveIndex) -> None:
        """Deliver one index (to the platform), or raise: the archiver keeps it and retries."""
        ...


class ListIndexSink:
    """Collects indexes in memory (tests, benchmarks). `fail` makes sends raise."""

    def __init__(self) -> None:
        self.indexes: list[ArchiveIndex] = []
        self.fail = False

    def send(self, index: ArchiveIndex) -> None:
        if self.fail:
            raise ConnectionError("index sink is failing (test)")
        self.indexes.append(index)


class ControlQueueIndexSink:
    """The platform's control queue: one ARCHIVE_INDEX_TASK message per archive object.

    A broker hiccup is retried `tries` times here (Celery's own publish retry comes on top);
    after that `send` raises and the archiver keeps the index for its next flush.
    """

    def __init__(self, app, *, connection=None, tries: int = 3, retry_seconds: float = 0.2):
        self.app = app
        self.tries = tries
        self.retry_seconds = retry_seconds
        self._options = {"connection": connection} if connection is not None else {}

    def send(self, index: ArchiveIndex) -> None:
        from workers.protocol import CONTROL_QUEUE

        for attempt in range(1, self.tries + 1):
            try:
                self.app.send_task(
                    ARCHIVE_INDEX_TASK, args=[to_dict(index)], queue=CONTROL_QUEUE, **self._options
                )
                return
            except Exception:
                if attempt == self.tries:
                    raise
                time.sleep(self.retry_seconds * attempt)


@dataclass
class _Member:
    """One record, encoded: its gzip member and its index entry (offset set at assembly)."""

    data: bytes
    entry: IndexEntry


@dataclass
class _Window:
    """Encoded records waiting to be stored as one object."""

    members: list[_Member]
    key: str | None = None  # fixed at the first put, so a retry rewrites the same key
    tried: bool = False

    @property
    def size(self) -> int:
        return sum(len(m.data) for m in self.members)


@dataclass
class _Stats:
    recorded: int = 0  # record() calls accepted
    written: int = 0  # records in stored objects
    objects: int = 0  # objects stored
    indexes_sent: int = 0
    dropped: int = 0  # records dropped: buffer caps, or unencodable
    dropped_indexes: int = 0
    put_failures: int = 0
    send_failures: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Archiver:
    def __init__(
        self,
        store: ObjectStore,
        spec: ReplicaSpec,
        sink: IndexSink,
        node: str,
        *,
        window_seconds: float | None = None,
        flush_records: int = DEFAULT_FLUSH_RECORDS,
        max_object_records: int = MAX_OBJECT_RECORDS,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        max_buffer_records: int = DEFAULT_MAX_BUFFER_RECORDS,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        first_retry_seconds: float = FIRST_RETRY_SECONDS,
        max_retry_seconds: float = MAX_RETRY_SECONDS,
    ) -> None:
        if max_buffer_records < 1 or max_object_records < 1:
            raise ValueError("the archive buffer and an object hold at least one record")
        self.store = store
        self.spec = spec
        self.sink = sink
        self.node = node
        self.window_seconds = float(window_seconds or spec.archive_window_seconds or 2.0)
        self.flush_records = max(1, flush_records)
        self.max_object_records = max_object_records
        self.max_object_bytes = max_object_bytes
        self.max_buffer_records = max_buffer_records
        self.max_buffer_bytes = max_buffer_bytes
        self.first_retry_seconds = first_retry_seconds
        self.max_retry_seconds = max_retry_seconds
        # Two lives of one replica id (a restart) must never name the same object.
        self._life = uuid.uuid4().hex[:8]
        self._seq = 0
        # Re-entrant: a SIGTERM handler that calls close() may interrupt record() while
        # the main thread holds the lock.
        self._lock = threading.RLock()
        self._raw: collections.deque[dict[str, Any]] = collections.deque()
        self._windows: collections.deque[_Window] = collections.deque()  # encoded, not stored
        self._unsent: collections.deque[ArchiveIndex] = collections.deque()  # stored, not indexed
        self._wake = threading.Event()
        self._closed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0  # monotonic time before which no put is tried (backoff)
        self._retry_delay = first_retry_seconds
        self._flush_lock = threading.RLock()  # one flush at a time (thread, or close())
        self._stats = _Stats()

    # -- the request path ----------------------------------------------------------------

    def record(self, record: dict[str, Any]) -> None:
        """Queue one request's record. O(1); never blocks on I/O, never raises."""
        try:
            with self._lock:
                if self._closed:
                    self._drop(1, "closed")
                    return
                if len(self._raw) >= self.max_buffer_records:
                    self._raw.popleft()
                    self._drop(1, "buffer_full")
                self._raw.append(record)
                self._stats.recorded += 1
                waiting = len(self._raw)
            if waiting >= self.flush_records:
                self._wake.set()
        except Exception:  # noqa: BLE001 - the request path must never fail on the archive
            log.exception("archive: could not queue a record")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Archiver:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"archiver-{self.spec.replica_id[:8]}", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> bool:
        """Flush everything buffered (objects, then their indexes) within `timeout` seconds.

        Returns True when nothing is left behind. Records recorded after close are dropped
        (counted). Safe to call twice, and without start().
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        # The thread's final pass may have given up on a failing store; keep trying until
        # the deadline (or do the whole flush here when never started).
        while True:
            self._retry_at = 0.0
            # A put that hangs in the thread holds the flush lock: wait no longer than asked.
            if not self._flush(timeout=max(0.0, deadline - time.monotonic())):
                break
            if self._empty() or time.monotonic() >= deadline:
                break
            time.sleep(min(self._retry_delay, max(0.0, deadline - time.monotonic())))
        empty = self._empty()
        if not empty:
            left = self.stats()
            log.error(
                "archive: closing with %d records and %d indexes not stored (store or broker "
                "down for the whole %.0f s)",
                left["waiting"],
                left["unsent_indexes"],
                timeout,
            )
        return empty

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = {k: v for k, v in vars(self._stats).items() if k != "by_reason"}
            stats["dropped_by_reason"] = dict(self._stats.by_reason)
            stats["waiting"] = len(self._raw) + sum(len(w.members) for w in self._windows)
            stats["waiting_bytes"] = sum(w.size for w in self._windows)
            stats["unsent_indexes"] = len(self._unsent)
        return stats

    def _empty(self) -> bool:
        with self._lock:
            return not self._raw and not self._windows and not self._unsent

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.window_seconds)
            self._wake.clear()
            try:
                self._flush()
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("archive: flush failed; trying again next window")
        try:
            self._flush()
        except Exception:  # noqa: BLE001
            log.exception("archive: final flush failed")

    # -- the flush ---------------------------------------------------------------------------

    def _flush(self, timeout: float | None = None) -> bool:
        """One pass: encode what waits, enforce the caps, store windows (unless backing
        off), send indexes. False when another flush held the lock past `timeout`."""
        if not self._flush_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            self._encode_waiting()
            self._enforce_caps()
            if time.monotonic() >= self._retry_at:
                self._store_windows()
            self._send_indexes()  # the broker's health is not the store's
        finally:
            self._flush_lock.release()
        return True

    def _encode_waiting(self) -> None:
        with self._lock:
            raw, self._raw = self._raw, collections.deque()
        if not raw:
            return
        members: list[_Member] = []
        for record in raw:
            member = self._encode(record)
            if member is not None:
                members.append(member)
        windows: list[_Window] = []
        current: list[_Member] = []
        size = 0
        for member in members:
            if current and (
                len(current) >= self.max_object_records
                or size + len(member.data) > self.max_object_bytes
            ):
                windows.append(_Window(current))
                current, size = [], 0
            current.append(member)
            size += len(member.data)
        if current:
            windows.append(_Window(current))
        with self._lock:
            self._windows.extend(windows)

    def _encode(self, record: dict[str, Any]) -> _Member | None:
        try:
            full = self._enrich(record)
            line = _dumps(full) + b"\n"
            data = gzip.compress(line, compresslevel=GZIP_LEVEL, mtime=0)
            return _Member(data, self._entry(full, len(data)))
        except Exception:  # noqa: BLE001 - one bad record must not stop the others
            log.exception("archive: dropping a record that cannot be encoded")
            with self._lock:
                self._drop(1, "unencodable")
            return None

    def _enrich(self, record: dict[str, Any]) -> dict[str, Any]:
        spec = self.spec
        full = dict(record)
        request_id = full.get("id")
        if not isinstance(request_id, str) or not request_id:
            full["id"] = uuid.uuid4().hex
        if not isinstance(full.get("time"), int | float) or not math.isfinite(full["time"]):
            full["time"] = time.time()
        subject = full.get("subject")
        hashed = ""
        if isinstance(subject, str) and subject.strip() and spec.subject_key:
            hashed = subject_hash(spec.subject_key, subject)
        full.update(
            deployment_id=spec.deployment_id,
            deployment=spec.deployment,
            project_id=spec.project_id,
            model=spec.model,
            version=spec.version,
            version_id=spec.version_id,
            replica_id=spec.replica_id,
            node=self.node,
            subject_hash=hashed,
        )
        return full

    def _entry(self, full: dict[str, Any], length: int) -> IndexEntry:
        caller = full.get("caller") if isinstance(full.get("caller"), dict) else {}
        usage = full.get("usage") if isinstance(full.get("usage"), dict) else {}
        timings = full.get("timings") if isinstance(full.get("timings"), dict) else {}
        return IndexEntry(
            id=full["id"],
            time=float(full["time"]),
            offset=0,
            length=length,
            endpoint=str(full.get("endpoint") or ""),
            status=str(full.get("status") or ""),
            version_id=self.spec.version_id,
            token_id=_int_or_none(caller.get("token_id")),
            user_id=_int_or_none(caller.get("user_id")),
            subject_hash=full["subject_hash"],
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")) or 0,
            completion_tokens=_int_or_none(usage.get("completion_tokens")) or 0,
            latency_ms=_float_or_none(timings.get("total_ms")) or 0.0,
            first_token_ms=_float_or_none(timings.get("first_token_ms")),
        )

    def _enforce_caps(self) -> None:
        """Drop the oldest encoded records while more wait than the caps allow."""
        with self._lock:
            count = len(self._raw) + sum(len(w.members) for w in self._windows)
            size = sum(w.size for w in self._windows)
            dropped = 0
            while self._windows and (
                count > self.max_buffer_records or size > self.max_buffer_bytes
            ):
                oldest = self._windows[0]
                member = oldest.members.pop(0)
                count -= 1
                size -= len(member.data)
                dropped += 1
                # An earlier put may have stored the old content under this key (its answer
                # lost): the trimmed window goes under a new key (the old one is an orphan).
                if oldest.tried:
                    oldest.key, oldest.tried = None, False
                if not oldest.members:
                    self._windows.popleft()
            if dropped:
                self._drop(dropped, "buffer_full")
        if dropped:
            log.warning(
                "archive: more records waiting than the buffer holds (the store is down or "
                "slower than the traffic); dropped the %d oldest (%d dropped in all)",
                dropped,
                self._stats.dropped,
            )

    def _store_windows(self) -> None:
        while True:
            with self._lock:
                if not self._windows:
                    return
                window = self._windows[0]
            index = self._put(window)
            if index is None:
                return  # backoff set; the window stays first in line
            with self._lock:
                if self._windows and self._windows[0] is window:
                    self._windows.popleft()
                self._stats.objects += 1
                self._stats.written += len(index.records)
                self._unsent.append(index)
                while len(self._unsent) > MAX_UNSENT_INDEXES:
                    lost = self._unsent.popleft()
                    self._stats.dropped_indexes += 1
                    log.error("archive: dropped the index of %s (broker down)", lost.object_key)

    def _put(self, window: _Window) -> ArchiveIndex | None:
        members = list(window.members)
        offset, entries = 0, []
        for member in members:
            entries.append(_with_offset(member.entry, offset))
            offset += len(member.data)
        data = b"".join(m.data for m in members)
        start = min(e.time for e in entries)
        end = max(e.time for e in entries)
        if window.key is None:
            window.key = self._key(start)
        window.tried = True
        try:
            try:
                self.store.put_bytes(window.key, data, content_type=CONTENT_TYPE)
            except ObjectExistsError:
                if not _holds(self.store, window.key, data):
                    window.key, window.tried = self._key(start), False
                    raise
        except Exception as error:  # noqa: BLE001 - any store failure: back off, retry later
            with self._lock:
                self._stats.put_failures += 1
            if self._retry_delay <= self.first_retry_seconds:
                log.warning("archive: storing %s failed, will retry: %s", window.key, error)
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.max_retry_seconds)
            return None
        self._retry_delay = self.first_retry_seconds
        return ArchiveIndex(
            object_key=window.key,
            project_id=self.spec.project_id,
            deployment_id=self.spec.deployment_id,
            replica_id=self.spec.replica_id,
            window_start=start,
            window_end=end,
            size=len(data),
            records=entries,
        )

    def _key(self, start: float) -> str:
        self._seq += 1
        day = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d")
        name = f"{int(start * 1000)}-{self._life}-{self._seq:06d}"
        spec = self.spec
        return archive_key(spec.project_id, spec.deployment_id, day, spec.replica_id, name)

    def _send_indexes(self) -> None:
        while True:
            with self._lock:
                if not self._unsent:
                    return
                index = self._unsent[0]
            try:
                self.sink.send(index)
            except Exception as error:  # noqa: BLE001 - kept for the next flush
                with self._lock:
                    self._stats.send_failures += 1
                log.warning(
                    "archive: sending the index of %s failed, kept for the next flush: %s",
                    index.object_key,
                    error,
                )
                return
            with self._lock:
                if self._unsent and self._unsent[0] is index:
                    self._unsent.popleft()
                self._stats.indexes_sent += 1

    def _drop(self, count: int, reason: str) -> None:
        # Called with self._lock held.
        self._stats.dropped += count
        self._stats.by_reason[reason] = self._stats.by_reason.get(reason, 0) + count


# -- helpers --------------------------------------------------------------------------------


def decode_member(data: bytes) -> dict[str, Any]:
    """One record from its gzip member (what a ranged read of an IndexEntry returns)."""
    return json.loads(gzip.decompress(data))


def decode_object(data: bytes) -> list[dict[str, Any]]:
    """Every record of a whole archive object (concatenated members are one gzip stream)."""
    return [json.loads(line) for line in gzip.decompress(data).splitlines() if line]


def _dumps(record: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError:  # NaN or infinity somewhere (a timing, a score): JSON has no such thing
        text = json.dumps(_finite(record), ensure_ascii=False, default=_json_default)
    # A lone surrogate (from a client's broken string) cannot be UTF-8: escape it instead.
    return text.encode("utf-8", "backslashreplace")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _with_offset(entry: IndexEntry, offset: int) -> IndexEntry:
    from dataclasses import replace

    return replace(entry, offset=offset)


def _holds(store: ObjectStore, key: str, data: bytes) -> bool:
    """Whether `key` already holds exactly `data` (an earlier put whose answer was lost)."""
    import hashlib

    try:
        info = store.stat(key)
    except Exception:  # noqa: BLE001
        return False
    return info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()


def records_of(indexes: Iterable[ArchiveIndex]) -> int:
    return sum(len(index.records) for index in indexes)
