"""Full-text search for a data subject's identifiers in their normalised forms.

    matcher = SubjectMatcher(["Ann.Lee@example.org", "CUST-000042"])
    with open_binary(path) as stream:
        scan = scan_stream(stream, matcher, is_jsonl=True, byte_budget=2**30)
    scan.positions, scan.complete        # 1-based line numbers of the records that match

What "matches" means (both sides normalised the same way):

* every identifier and every record text is case-folded and each run of whitespace
  becomes one space (:func:`normalise_text`): ``"Ann  LEE"`` matches ``"ann\\nlee"``;
* an identifier that is an e-mail address matches every address in the text whose local
  part equals it without dots and without a ``+tag`` (:func:`normalise_email`):
  ``ann.lee@example.org`` matches ``AnnLee+shop@Example.org``;
* any other identifier matches as a whole word: ``CUST-42`` matches ``cust-42,`` but not
  ``cust-420``;
* a JSONL record is searched in its decoded values and keys (so ``\\u`` escapes are no
  hiding place), each field apart so that no match spans two of them; a line that is not
  valid JSON is searched as text.

Not covered: spelled-out forms ("ann dot lee at example dot org"), other encodings
(base64, URL-encoding), names split across records.

Speed: most data holds no identifier at all. A block of ASCII input without JSON ``\\u``
escapes lowers (bytes.lower, C speed) to exactly its case-folded text, so a block that
lacks every identifier's *anchor* (its longest word; an e-mail's local part, looked for
with dots removed) cannot match and is skipped whole; only blocks with an anchor are split
into lines and decoded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_BLOCK = 2**20


def normalise_text(text: str) -> str:
    """Case-folded, every run of whitespace one space, trimmed: ``" Ann\\n  LEE"`` -> ``"ann lee"``."""
    return " ".join(text.casefold().split())


def normalise_email(address: str) -> str:
    """Case-folded, the local part without dots and without a ``+tag``:
    ``"Ann.Lee+shop@Example.org"`` -> ``"annlee@example.org"``.

    Dots are dropped for every domain (Gmail ignores them, most providers do not): for an
    erasure, finding a near-namesake too is the safer error than missing the person."""
    local, _, domain = address.casefold().rpartition("@")
    return local.split("+", 1)[0].replace(".", "") + "@" + domain


class SubjectMatcher:
    """Does a record mention any of the identifiers, in their normalised forms?"""

    def __init__(self, identifiers: Sequence[str]):
        self.emails: set[str] = set()
        patterns: list[str] = []
        self.anchors: list[bytes] = []  # looked for in the lowered bytes
        self.dotless_anchors: list[bytes] = []  # looked for with every dot removed
        self.prefilter = True
        for identifier in identifiers:
            form = normalise_text(identifier)
            if not form:
                raise ValueError("an identifier is empty after normalisation; give real ids")
            if EMAIL.fullmatch(form):
                address = normalise_email(form)
                self.emails.add(address)
                self._anchor(address.partition("@")[0], self.dotless_anchors)
            else:
                # word boundaries: customer "c-42" is not customer "c-420"
                patterns.append(r"(?<!\w)" + re.escape(form) + r"(?!\w)")
                self._anchor(max(form.split(" "), key=len), self.anchors)
        self.pattern = re.compile("|".join(patterns)) if patterns else None

    def _anchor(self, anchor: str, into: list[bytes]) -> None:
        if anchor and anchor.isascii() and not set(anchor) & set('"\\/'):
            into.append(anchor.encode())
        else:  # a non-ASCII or escaped anchor would not show in the raw bytes as it is
            self.prefilter = False

    def may_match(self, data: bytes) -> bool:
        """False only when ``data`` (lines of input) cannot hold a match: cheap, bytes only."""
        if not self.prefilter or not data.isascii() or b"\\u" in data:
            return True
        lowered = data.lower()
        if any(anchor in lowered for anchor in self.anchors):
            return True
        if self.dotless_anchors:
            dotless = lowered.replace(b".", b"")
            return any(anchor in dotless for anchor in self.dotless_anchors)
        return False

    def matches(self, text: str) -> bool:
        form = normalise_text(text)
        if self.pattern is not None and self.pattern.search(form):
            return True
        return bool(self.emails) and any(
            normalise_email(found) in self.emails for found in EMAIL.findall(form)
        )


def _strings(value) -> Iterator[str]:
    """Every string in a JSON value, keys too: a record's text and its metadata."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


def record_text(line: bytes, is_jsonl: bool) -> str:
    """What a record says: a JSONL line's values and keys one per line, else the line."""
    text = line.decode("utf-8", errors="replace")
    if is_jsonl:
        try:
            return "\n".join(_strings(json.loads(text)))
        except json.JSONDecodeError:
            pass  # a malformed line is still searched, as text
    return text


@dataclass
class StreamScan:
    positions: list[int] = field(default_factory=list)  # numbers of the matching lines
    lines: int = 0  # lines read
    bytes: int = 0  # decoded bytes read
    complete: bool = True  # false: the byte budget ran out before the end


def scan_stream(
    stream: BinaryIO,
    matcher: SubjectMatcher,
    *,
    is_jsonl: bool,
    byte_budget: int,
    first_line: int = 1,
) -> StreamScan:
    """Search a (decompressed) stream of lines; stop at the last whole line within budget."""
    scan = StreamScan()
    number = first_line
    while True:
        block = stream.read(_BLOCK)
        if not block:
            break
        if not block.endswith(b"\n"):
            block += stream.readline()  # whole lines only
        if scan.bytes + len(block) > byte_budget:
            block = block[: block.rfind(b"\n", 0, byte_budget - scan.bytes) + 1]
            scan.complete = False
        lines = block.split(b"\n") if block else []
        if block.endswith(b"\n"):
            lines.pop()
        if matcher.may_match(block):
            for offset, line in enumerate(lines):
                if (
                    line.strip()
                    and matcher.may_match(line)
                    and matcher.matches(record_text(line, is_jsonl))
                ):
                    scan.positions.append(number + offset)
        number += len(lines)
        scan.lines += len(lines)
        scan.bytes += len(block)
        if not scan.complete:
            break
    return scan
