"""Residue scan: does any stored object version still hold a data subject's identifiers?

    report = scan_objects(store, ["projects/7/"], ["Ann.Lee+news@Example.com", "C-1042"])
    report.clean        # False when a hit was found or an object could not be read
    report.hits         # [ResidueHit(key, version_id, offset, line, needle, form, context)]

Every version under the prefixes is read (current and old ones, never delete markers),
streamed in chunks of `chunk_size` with an overlap, so memory stays constant and a needle
split across two chunks is still found. Objects are decoded by their magic bytes: gzip
(every member of a multi-member file, as the inference archive writes them), zstd (every
frame, as the pipeline's `records-*.jsonl.zst` shards), anything else is scanned as it is
stored (Parquet's compressed pages and other binary formats are therefore not searched
inside: a scan of those proves nothing and the caller must know it).

Normalised forms a needle matches in the decoded text (stated exactly, for the certificate):
1. The identifier is stripped; case is ignored (ASCII letters fold both ways; a needle with
   non-ASCII letters matches its lower-case, upper-case and title-case spellings, and its
   JSON `\\uXXXX` escaped spelling, which `json.dumps` writes by default).
2. Every run of whitespace in the identifier matches a run of 1 to 16 whitespace bytes or
   JSON escapes `\\n`, `\\r`, `\\t` ("Ann  Lee" matches "ann lee", "ANN\\nLEE").
3. A needle that starts and ends with a letter or digit does not match inside a longer
   word or number ("C-1042" does not match "C-10420").
4. An e-mail address (one "@", a dot in the domain) matches with the dots of its local part
   removed or placed anywhere and with any "+tag" (up to 64 characters): the needle
   "Ann.Lee+news@Example.com" matches "annlee@example.com", "a.n.n.l.e.e@example.com" and
   "annlee+shop@EXAMPLE.COM", but not "xannlee@example.com" (a letter, digit or one of
   `._%+-` may not precede it) nor "annlee@example.community".

A hit records where (key, version id, byte offset in the decoded stream, 1-based line),
which needle (its index: the identifiers themselves are never stored in the report) and a
short context with the match replaced by `[needle N]`.

Speed (bench/bench_residue.py, 300 MB stored: plain JSONL, zstd shards, gzip-member
archive windows; the shared 2-core box): one worker reads ~80-85 MB/s of stored bytes
(~250-260 MB/s of decoded text), bound by the GIL: zlib's setup per ~600-byte gzip member
(~95 MB/s stored for inflating alone, whatever the window or call: one decompressobj per
member, a `zlib.decompress` per header-split member and a 1-4 KB window all measured
within 10%) and `bytes.find`/`lower`/`count` over the decoded text (~2 ns a byte). So
the default runs one worker process per CPU (at most 4): 149-160 MB/s stored (1.5-1.6x
the issue's 100 MB/s goal, 4.6-5x on decoded text) where 2 threads read 87-96 MB/s. A
box whose other core is busy gets about the one-worker rate either way.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field

from workers.storage.base import ObjectStore, ObjectVersion
from workers.storage.errors import StorageError
from workers.storage.local import LocalObjectStore
from workers.storage.streams import IterableReader

CHUNK_SIZE = 1024 * 1024
CONTEXT_CHARS = 24
MAX_HITS = 1000
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Compressed bytes handed to one gzip member's decoder at a time: the rest comes back as
# `unused_data` (a copy), so a small window keeps the per-member cost low (1 KB: a
# ~600-byte member in one call, +2% over 4 KB; the zlib setup per member is the rest).
_GZIP_WINDOW = 1024
_WHITESPACE = rb"(?:[ \t\r\n\f\v]|\\[nrt]){1,16}"
_WS_MAX = 16 * 2
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_EMAIL_BEFORE = rb"(?<![a-z0-9._%+\-])"
_TAG = rb"(?:\+[a-z0-9._%+\-]{0,64})?"
_WORD_BYTE = rb"[a-z0-9]"


@dataclass(frozen=True)
class _Form:
    """One way a needle can appear: find `anchor` (fast), then confirm with `pattern`.

    `pattern` is matched with `search(buf, pos - before, pos + after)` around each anchor
    found at `pos`; a match must contain the anchor.
    """

    needle: int
    kind: str  # "text" or "email"
    anchor: bytes
    pattern: re.Pattern[bytes]
    before: int
    after: int


@dataclass(frozen=True)
class ResidueHit:
    key: str
    version_id: str
    offset: int  # of the match's first byte in the decoded stream
    line: int  # 1-based
    needle: int  # index into the needles scanned for
    form: str  # "text" or "email"
    context: str  # the match replaced by "[needle N]"
    encoding: str  # "plain", "gzip" or "zstd"


@dataclass
class ResidueReport:
    prefixes: list[str]
    needles: int
    objects: int = 0  # object versions read
    bytes_stored: int = 0
    bytes_decoded: int = 0
    seconds: float = 0.0
    hits: list[ResidueHit] = field(default_factory=list)
    hit_count: int = 0  # every hit, also those past MAX_HITS that were not kept
    errors: list[dict] = field(default_factory=list)  # versions that could not be read

    @property
    def clean(self) -> bool:
        """No hit, and every version read: an unreadable object proves nothing."""
        return self.hit_count == 0 and not self.errors

    def to_dict(self) -> dict:
        data = asdict(self)
        data["clean"] = self.clean
        return data


def needle_forms(needles: Sequence[str]) -> list[_Form]:
    """The compiled forms of every needle (see the module's docstring)."""
    forms: list[_Form] = []
    for index, raw in enumerate(needles):
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"needle {index} is empty")
        text = " ".join(raw.split())
        if _EMAIL.fullmatch(text):
            forms.append(_email_form(index, text))
            continue
        for spelling in _spellings(text):
            forms.append(_text_form(index, spelling))
    return forms


def _spellings(text: str) -> list[bytes]:
    variants = [text.lower()]
    if not text.isascii():
        variants += [text.upper(), text.title(), text]
        # JSON's escaped spelling of each: "josé" is "jos\u00e9" in a json.dumps line.
        variants += [json.dumps(v)[1:-1] for v in variants]
    out: list[bytes] = []
    for variant in variants:
        encoded = variant.encode("utf-8").lower()  # ASCII letters fold; the text's do too
        if encoded not in out:
            out.append(encoded)
    return out


def _text_form(index: int, spelling: bytes) -> _Form:
    tokens = spelling.split(b" ")
    body = _WHITESPACE.join(re.escape(t) for t in tokens)
    starts_word = re.fullmatch(_WORD_BYTE, spelling[:1]) is not None
    ends_word = re.fullmatch(_WORD_BYTE, spelling[-1:]) is not None
    pattern = (
        (rb"(?<![a-z0-9])" if starts_word else b"")
        + body
        + (rb"(?![a-z0-9])" if ends_word else b"")
    )
    # The longest token anchors (the rarest, as a rule: the id over a prefix); between
    # tokens as long, the one of the rarer letters ("ann" over "lee": bytes.find slows
    # down where the anchor's letters are common, ~620 against ~1080 MB/s in the bench's
    # archive text). The match is confirmed around it, up to the longest span either side.
    at = max(range(len(tokens)), key=lambda i: (len(tokens[i]), -_commonness(tokens[i]), i))
    before = sum(len(t) + _WS_MAX for t in tokens[:at]) + 1
    after = sum(len(t) + _WS_MAX for t in tokens[at + 1 :]) + len(tokens[at]) + 1
    return _Form(index, "text", tokens[at], re.compile(pattern), before=before, after=after)


# Letter frequencies of English text, in percent (other bytes count as rare).
_LETTER_PERCENT = dict(
    zip(
        b"etaoinshrdlcumwfgypbvkjxqz",
        (
            12.7,
            9.1,
            8.2,
            7.5,
            7.0,
            6.7,
            6.3,
            6.1,
            6.0,
            4.3,
            4.0,
            2.8,
            2.8,
            2.4,
            2.4,
            2.2,
            2.0,
            2.0,
            1.9,
            1.5,
            1.0,
            0.8,
            0.2,
            0.2,
            0.1,
            0.1,
        ),
        strict=True,
    )
)


def _commonness(token: bytes) -> float:
    return sum(_LETTER_PERCENT.get(byte, 0.0) for byte in token)


def _email_form(index: int, text: str) -> _Form:
    local, _, domain = text.lower().rpartition("@")
    canonical = local.split("+", 1)[0].replace(".", "")
    local_bytes = canonical.encode("utf-8")
    dotted = rb"\.?".join(re.escape(bytes([b])) for b in local_bytes)
    anchor = b"@" + domain.encode("utf-8")
    pattern = re.compile(_EMAIL_BEFORE + dotted + _TAG + re.escape(anchor) + rb"(?![a-z0-9\-])")
    # Up to one dot per character of the local part, a tag of 65, one byte of look-behind.
    before = 2 * len(local_bytes) + 65 + 1
    return _Form(index, "email", anchor, pattern, before=before, after=len(anchor) + 1)


# -- decoding ---------------------------------------------------------------------------


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Every member of a (multi-member) gzip stream, decoded, in ~CHUNK_SIZE pieces."""
    decoder = zlib.decompressobj(31)
    fed = False
    out: list[bytes] = []
    pending = 0
    for chunk in chunks:
        view = memoryview(chunk)
        pos = 0
        while pos < len(view):
            piece = view[pos : pos + _GZIP_WINDOW]
            data = decoder.decompress(piece)
            fed = True
            if data:
                out.append(data)
                pending += len(data)
            if decoder.eof:
                pos += len(piece) - len(decoder.unused_data)
                decoder, fed = zlib.decompressobj(31), False
            else:
                pos += len(piece)
        if pending >= CHUNK_SIZE:
            yield b"".join(out)
            out, pending = [], 0
    if fed:
        raise zlib.error("the gzip stream ends inside a member (truncated)")
    if out:
        yield b"".join(out)


def _unzstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(
        IterableReader(chunks), read_across_frames=True
    )
    while data := reader.read(CHUNK_SIZE):
        yield data


def _decoded(chunks: Iterator[bytes]) -> tuple[str, Iterator[bytes]]:
    first = next(chunks, b"")

    def again() -> Iterator[bytes]:
        if first:
            yield first
        yield from chunks

    if first.startswith(_GZIP_MAGIC):
        return "gzip", _gunzip(again())
    if first.startswith(_ZSTD_MAGIC):
        return "zstd", _unzstd(again())
    return "plain", again()


# -- scanning ---------------------------------------------------------------------------


class _Scanner:
    """Searches one decoded stream chunk by chunk, keeping just enough overlap."""

    def __init__(self, forms: list[_Form]) -> None:
        self.forms = forms
        self.before = max(f.before for f in forms)
        self.after = max(f.after for f in forms)

    def scan(self, chunks: Iterable[bytes]) -> Iterator[tuple[int, int, _Form, str]]:
        """(offset, line, form, context) of every match, in order of the stream."""
        buf = b""
        base = 0  # stream offset of buf[0]
        lines = 0  # newlines before buf[0]
        lo = 0  # anchors before this index of buf were handled with the previous buffer
        for chunk in chunks:
            buf += chunk.lower()
            if len(buf) < 2 * (self.before + self.after) + CHUNK_SIZE // 2:
                continue  # tiny pieces (gzip members): gather a real chunk first
            hi = len(buf) - self.after
            yield from self._matches(buf, base, lines, lo, hi)
            drop = hi - self.before
            lines += buf.count(b"\n", 0, drop)
            base += drop
            buf = buf[drop:]
            lo = self.before
        yield from self._matches(buf, base, lines, lo, len(buf))

    def _matches(self, buf: bytes, base: int, lines: int, lo: int, hi: int):
        seen: set[tuple[int, int]] = set()
        for form in self.forms:
            find = buf.find
            pos = find(form.anchor, lo, hi + len(form.anchor) - 1)
            while pos != -1 and pos < hi:
                window = form.pattern.finditer(
                    buf, max(0, pos - form.before), min(len(buf), pos + form.after)
                )
                for match in window:
                    if match.start() > pos:
                        break
                    if pos < match.end() and (form.needle, match.start()) not in seen:
                        seen.add((form.needle, match.start()))
                        line = lines + buf.count(b"\n", 0, match.start()) + 1
                        yield base + match.start(), line, form, _context(buf, match, form.needle)
                pos = find(form.anchor, pos + 1, hi + len(form.anchor) - 1)


def _context(buf: bytes, match: re.Match[bytes], needle: int) -> str:
    """A few characters either side, the match itself never: "…ail me at [needle 0] ple…"."""
    left = buf[max(0, match.start() - CONTEXT_CHARS) : match.start()]
    right = buf[match.end() : match.end() + CONTEXT_CHARS]
    text = left.decode("utf-8", "replace") + f"[needle {needle}]" + right.decode("utf-8", "replace")
    return " ".join(text.split())


def scan_objects(
    store: ObjectStore,
    prefixes: Sequence[str],
    needles: Sequence[str],
    *,
    chunk_size: int = CHUNK_SIZE,
    max_hits: int = MAX_HITS,
    threads: int | None = None,
    processes: bool = True,
) -> ResidueReport:
    """Read every object version under `prefixes` and report where any needle occurs.

    Versions are scanned `threads` at a time (default: one per CPU, at most 4). With
    `processes` (the default) the workers are processes: decoding ~600-byte gzip members
    and searching the text hold the GIL, so threads barely add (+15% on 2 cores) where
    processes scale with the cores (1.5-1.6x the issue's goal on the bench, see the
    module's docstring). Workers of a local store read its files themselves; for any
    other store the parent reads each version (up to PROCESS_MAX_BYTES; a larger one is
    streamed and scanned in the parent meanwhile) and hands its bytes over, so no store
    client crosses a fork. Where a process pool cannot start (a daemonic process, a
    sandbox) or loses a worker, threads scan everything. Hits are sorted by key, version
    and offset. A version that cannot be read or decoded is listed in `errors` (and the
    report is not clean); the scan goes on with the next one. Listing a prefix that fails
    raises StorageError: the caller cannot claim a clean scan of what it could not list.
    """
    forms = needle_forms(needles)
    scanner = _Scanner(forms)
    report = ResidueReport(prefixes=list(prefixes), needles=len(needles))
    started = time.perf_counter()
    versions = [
        version
        for prefix in prefixes
        for version in store.list_versions(prefix)
        if not version.is_delete_marker
    ]
    workers = max(1, threads or min(4, os.cpu_count() or 1))

    def scan(version: ObjectVersion) -> _Partial:
        return _scan_version(store, scanner, version.key, version.version_id, chunk_size, max_hits)

    partials: list[_Partial] | None = None
    if workers > 1 and len(versions) > 1 and processes:
        partials = _scan_in_processes(store, needles, versions, workers, chunk_size, max_hits)
    if partials is None and workers > 1 and len(versions) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="residue") as pool:
            partials = list(pool.map(scan, versions))
    if partials is None:
        partials = [scan(version) for version in versions]
    for partial in partials:
        report.objects += 1
        report.bytes_stored += partial.bytes_stored
        report.bytes_decoded += partial.bytes_decoded
        report.hit_count += partial.hit_count
        report.hits.extend(partial.hits)
        if partial.error:
            report.errors.append(partial.error)
    report.hits.sort(key=lambda h: (h.key, h.version_id, h.offset, h.needle))
    del report.hits[max_hits:]
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Partial:
    bytes_stored: int = 0
    bytes_decoded: int = 0
    hit_count: int = 0
    hits: list[ResidueHit] = field(default_factory=list)
    error: dict | None = None


# -- process workers --------------------------------------------------------------------

# A version up to this size is read whole by the parent and scanned by a worker process;
# at most 2 per worker are in flight, so the parent holds a bounded amount of bytes.
PROCESS_MAX_BYTES = 32 * 1024 * 1024
_worker_scanner: _Scanner | None = None
_worker_store: ObjectStore | None = None


def _init_worker(needles: list[str], store: ObjectStore | None) -> None:
    global _worker_scanner, _worker_store
    _worker_scanner = _Scanner(needle_forms(needles))
    _worker_store = store


def _scan_stored_version(key: str, version_id: str, chunk_size: int, max_hits: int) -> _Partial:
    """In a worker process: read (streamed), decode and search one version of a local store."""
    assert _worker_scanner is not None and _worker_store is not None
    return _scan_version(_worker_store, _worker_scanner, key, version_id, chunk_size, max_hits)


def _scan_stored_bytes(
    key: str, version_id: str, data: bytes, chunk_size: int, max_hits: int
) -> _Partial:
    """In a worker process: decode and search one version's stored bytes."""
    assert _worker_scanner is not None
    pieces = (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))
    return _scan_chunks(_worker_scanner, key, version_id, pieces, max_hits)


def _process_pool(
    workers: int, needles: list[str], store: ObjectStore
) -> tuple[ProcessPoolExecutor, bool]:
    """The pool, and whether its workers read the store themselves (never, now).

    forkserver, not fork: the scan runs inside processes that hold threads (a Celery
    worker's heartbeat, pytest-xdist's channel, a database client's pool), and a child
    forked from such a process can inherit a lock some other thread held at that moment
    and hang on it forever (a plain fork hung the test suite's workers). The fork server
    is a fresh single-threaded process that forks the workers. A local store (plain
    files, no connection; it pickles) goes to the workers, which read their versions
    themselves, saving the parent ~12% of the CPU in reading and handing over bytes; any
    other store's client stays in the parent, which hands the workers the bytes.
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    shared = store if type(store) is LocalObjectStore else None
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(needles, shared),
    )
    return pool, shared is not None


def _scan_in_processes(
    store: ObjectStore,
    needles: Sequence[str],
    versions: list[ObjectVersion],
    workers: int,
    chunk_size: int,
    max_hits: int,
) -> list[_Partial] | None:
    """Partials in the order of `versions`, or None when no process pool could run."""
    scanner = _Scanner(needle_forms(needles))
    partials: list[_Partial | None] = [None] * len(versions)
    try:
        pool, workers_read = _process_pool(workers, list(needles), store)
    except (OSError, ValueError, AssertionError, NotImplementedError):
        return None
    in_flight: dict[Future, int] = {}
    try:
        with pool:
            for index, version in enumerate(versions):
                if workers_read:
                    in_flight[
                        pool.submit(
                            _scan_stored_version,
                            version.key,
                            version.version_id,
                            chunk_size,
                            max_hits,
                        )
                    ] = index
                    continue
                if version.size > PROCESS_MAX_BYTES:
                    # Too big to hand over whole: streamed here, while the workers run.
                    partials[index] = _scan_version(
                        store, scanner, version.key, version.version_id, chunk_size, max_hits
                    )
                    continue
                try:
                    data = b"".join(
                        store.iter_chunks(version.key, chunk_size, version_id=version.version_id)
                    )
                except (StorageError, OSError, ValueError) as error:
                    partials[index] = _Partial(
                        error={
                            "key": version.key,
                            "version_id": version.version_id,
                            "error": str(error),
                        }
                    )
                    continue
                while len(in_flight) >= 2 * workers:
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        partials[in_flight.pop(future)] = future.result()
                future = pool.submit(
                    _scan_stored_bytes,
                    version.key,
                    version.version_id,
                    data,
                    chunk_size,
                    max_hits,
                )
                in_flight[future] = index
                del data
            for future, index in in_flight.items():
                partials[index] = future.result()
    except (BrokenProcessPool, OSError, AssertionError):
        # The pool could not start or lost a worker (a daemonic parent, a sandbox, a
        # worker killed for memory): the caller scans everything again with threads.
        return None
    return [partial if partial is not None else _Partial() for partial in partials]


def _scan_version(
    store: ObjectStore,
    scanner: _Scanner,
    key: str,
    version_id: str,
    chunk_size: int,
    max_hits: int,
) -> _Partial:
    return _scan_chunks(
        scanner,
        key,
        version_id,
        _read_lazily(store, key, version_id, chunk_size),
        max_hits,
    )


def _read_lazily(store: ObjectStore, key: str, version_id: str, chunk_size: int) -> Iterator[bytes]:
    # A generator, so a failure to open the version surfaces inside _scan_chunks's try.
    yield from store.iter_chunks(key, chunk_size, version_id=version_id)


def _scan_chunks(
    scanner: _Scanner,
    key: str,
    version_id: str,
    chunks: Iterable[bytes],
    max_hits: int,
) -> _Partial:
    partial = _Partial()

    def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            partial.bytes_stored += len(chunk)
            yield chunk

    def decoded_counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            partial.bytes_decoded += len(chunk)
            yield chunk

    try:
        encoding, decoded = _decoded(counted(chunks))
        for offset, line, form, context in scanner.scan(decoded_counted(decoded)):
            partial.hit_count += 1
            if len(partial.hits) < max_hits:
                partial.hits.append(
                    ResidueHit(
                        key, version_id, offset, line, form.needle, form.kind, context, encoding
                    )
                )
    except (StorageError, zlib.error, OSError, ValueError) as error:
        partial.error = {"key": key, "version_id": version_id, "error": str(error)}
    except Exception as error:
        # zstandard raises ZstdError, a subclass of Exception only.
        if type(error).__name__ != "ZstdError":
            raise
        partial.error = {"key": key, "version_id": version_id, "error": str(error)}
    return partial
