"""The "inspect an uploaded file" job: size, sha256, line count, format, first records.

Streams the object once, chunk by chunk (constant memory whatever the file size),
decompressing gzip/zstd on the fly so the line count and records are those of the content.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import zlib
from dataclasses import dataclass, field

from workers.runtime import JobContext, JobFailed

CHUNK = 1024 * 1024
# Enough of the content to recognise the format and read the first records.
HEAD_BYTES = 256 * 1024
PREVIEW_CHARS = 300

MAGIC = [
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PAR1", "parquet"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"PK\x03\x04", "zip"),
    (b"\x93NUMPY", "npy"),
]


@dataclass
class ContentScan:
    """Running totals over the (decompressed) content."""

    lines: int = 0
    bytes: int = 0
    last_byte: bytes = b""
    head: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.lines += data.count(b"\n")
        self.bytes += len(data)
        self.last_byte = data[-1:]
        if len(self.head) < HEAD_BYTES:
            self.head.extend(data[: HEAD_BYTES - len(self.head)])

    @property
    def line_count(self) -> int:
        return self.lines + (1 if self.bytes and self.last_byte != b"\n" else 0)


def _magic(head: bytes) -> str | None:
    for prefix, name in MAGIC:
        if head.startswith(prefix):
            return name
    return None


def _decompressor(kind: str | None):
    if kind == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return inflater.decompress
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress
    return None


def _clip(value) -> object:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def _complete_lines(head: bytes, limit: int) -> list[str]:
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if len(head) >= HEAD_BYTES:
        lines = lines[:-1]  # the last line may be cut in the middle
    return [line.rstrip("\r") for line in lines][: limit * 4 + 8]


def _detect_text_format(head: bytes, limit: int) -> tuple[str, list]:
    if b"\x00" in head[:8192]:
        return "binary", []
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not just a character cut at the end of the head
            return "binary", []
    lines = [line for line in _complete_lines(head, limit) if line.strip()]
    if not lines:
        return "empty", []
    parsed = []
    for line in lines[:limit]:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            break
    if (
        parsed
        and len(parsed) == min(limit, len(lines))
        and all(isinstance(p, dict) for p in parsed)
    ):
        return "jsonl", [{k: _clip(v) for k, v in record.items()} for record in parsed]
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        try:
            document = json.loads(head)
            records = document[:limit] if isinstance(document, list) else [document]
            return "json", [_clip(record) for record in records]
        except ValueError:
            pass
    sample = "\n".join(lines[:20])
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        rows = list(csv.reader(io.StringIO("\n".join(lines[: limit + 1])), dialect))
        if len(rows) >= 2 and len(rows[0]) > 1 and all(len(row) == len(rows[0]) for row in rows):
            header = rows[0]
            return "csv", [
                {name: _clip(value) for name, value in zip(header, row, strict=True)}
                for row in rows[1:]
            ]
    except csv.Error:
        pass
    return "text", [_clip(line) for line in lines[:limit]]


class _RateLimiter:
    def __init__(self, mb_per_s: float | None):
        self.bytes_per_s = mb_per_s * 1024 * 1024 if mb_per_s else None
        self.started = time.monotonic()
        self.sent = 0

    def wait(self, nbytes: int) -> None:
        if self.bytes_per_s is None:
            return
        self.sent += nbytes
        ahead = self.sent / self.bytes_per_s - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def inspect_upload(ctx: JobContext) -> dict:
    (source,) = ctx.spec.inputs
    # Filled in by the platform (jobs/params.py); a rate limit is optional (none: no limit).
    limit = ctx.spec.params["preview_records"]
    limiter = _RateLimiter(ctx.spec.params.get("read_rate_limit_mb_s"))
    digest = hashlib.sha256()
    raw_size = 0
    compression: str | None = None
    decompress = None
    scan = ContentScan()
    last_report = 0.0
    for chunk in ctx.store.iter_chunks(source.uri, chunk_size=CHUNK):
        if raw_size == 0:
            detected = _magic(chunk)
            compression = detected if detected in ("gzip", "zstd") else None
            decompress = _decompressor(compression)
        digest.update(chunk)
        raw_size += len(chunk)
        try:
            scan.feed(decompress(chunk) if decompress else chunk)
        except Exception as error:  # zlib.error, zstandard.ZstdError: corrupt stream
            raise JobFailed(
                f"the file looks {compression}-compressed but does not decompress: {error}"
            ) from None
        limiter.wait(len(chunk))
        ctx.check_stop()
        now = time.monotonic()
        if now - last_report > 1.0:
            ctx.progress(raw_size / max(source.size, 1), f"read {raw_size} of {source.size} bytes")
            last_report = now
    sha256 = digest.hexdigest()
    if sha256 != source.sha256 or raw_size != source.size:
        raise JobFailed(
            f"the stored object does not match its upload record (sha256 {sha256[:12]}…, "
            f"{raw_size} bytes; expected {source.sha256[:12]}…, {source.size} bytes)"
        )
    head = bytes(scan.head)
    binary_format = _magic(head)
    if binary_format:
        fmt, records, lines = binary_format, [], None
    else:
        fmt, records = _detect_text_format(head, limit)
        lines = scan.line_count if fmt != "binary" else None
    result = {
        "size": raw_size,
        "sha256": sha256,
        "compression": compression,
        "content_bytes": scan.bytes,
        "format": fmt,
        "line_count": lines,
        "records": records,
    }
    report = json.dumps(result, ensure_ascii=False, indent=2).encode()
    key = ctx.output_key("inspection.json")
    stored = ctx.store.put_bytes(key, report)
    ctx.artifact(name="inspection.json", key=key, sha256=stored.sha256, size=stored.size)
    return result
