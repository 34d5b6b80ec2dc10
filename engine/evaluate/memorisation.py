"""Memorisation: which generated spans occur verbatim in the training text.

An exact n-gram index over characters: every ``span``-character window of the training
text is hashed (a polynomial hash of its code points, modulo 2**64, computed for all
windows at once with numpy: ``span`` vectorised multiply-adds) and the distinct hashes
are kept sorted. A generated span is "found" when its hash is in the index: exact up to
64-bit hash collisions (odds ~ windows / 2**64 per lookup). Time and memory are linear in
the text, ~8 bytes per window, so the text is capped (``max_chars``) and the cap reported.

The training text is the decoded train split of the token shards the model was trained
on; documents are joined with a NUL character, which generated text never holds, so no
span that crosses two documents can match.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.shards import MANIFEST_NAME, ShardError, ShardManifest, load_manifest

# Odd 64-bit multiplier (the golden-ratio constant): distinct texts, distinct hashes.
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
DOCUMENT_SEPARATOR = "\x00"
_DECODE_TOKENS = 1 << 20  # tokens decoded at a time


def span_hashes(text: str, span: int) -> np.ndarray:
    """The hash of every ``span``-character window of ``text`` (empty when it is shorter)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = len(points) - span + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(span):
            hashes *= _MULTIPLIER
            hashes += points[offset : offset + count]
    return hashes


@dataclass
class SpanIndex:
    """The distinct span hashes of a text, sorted, for membership lookups."""

    span: int
    hashes: np.ndarray  # sorted, unique
    chars: int  # characters of text indexed
    capped: bool = False  # the text was longer than the cap

    @classmethod
    def build(cls, text: str, span: int, *, capped: bool = False) -> SpanIndex:
        return cls(span, _sorted_unique(span_hashes(text, span)), len(text), capped)

    def __len__(self) -> int:
        return len(self.hashes)

    def found(self, text: str) -> tuple[int, int]:
        """(spans of ``text`` found in the index, spans of ``text``)."""
        queries = span_hashes(text, self.span)
        if not len(queries) or not len(self.hashes):
            return 0, len(queries)
        where = np.searchsorted(self.hashes, queries)
        where[where == len(self.hashes)] = 0
        return int((self.hashes[where] == queries).sum()), len(queries)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique, in place: an in-place sort is several times faster on 64-bit keys."""
    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _train_tokens(manifest: ShardManifest) -> Iterator[np.ndarray]:
    """The train split's token stream in blocks of at most _DECODE_TOKENS."""
    for shard in manifest.shards_for("train"):
        tokens = np.memmap(
            manifest.root / shard.path, dtype=np.dtype(shard.dtype).newbyteorder("<"), mode="r"
        )
        for start in range(0, len(tokens), _DECODE_TOKENS):
            yield np.asarray(tokens[start : start + _DECODE_TOKENS])


def training_text(manifest: ShardManifest, tokenizer, max_chars: int) -> tuple[str, bool]:
    """(the decoded train split, at most ``max_chars`` characters; whether it was cut).

    Documents are cut at end-of-text tokens and joined with DOCUMENT_SEPARATOR; a block of
    tokens is decoded up to its last end-of-text, the rest goes with the next block, so a
    multi-token character is never split (byte-level BPE)."""
    eot = manifest.eot_id
    pieces: list[str] = []
    chars = 0
    carry = np.empty(0, dtype=np.int64)
    blocks = _train_tokens(manifest)
    for block in blocks:
        tokens = np.concatenate([carry, block.astype(np.int64)])
        ends = np.flatnonzero(tokens == eot)
        if len(ends):
            ready, carry = tokens[: ends[-1] + 1], tokens[ends[-1] + 1 :]
        else:
            ready, carry = tokens, np.empty(0, dtype=np.int64)
        chars += _decode_documents(ready, eot, tokenizer, pieces)
        if chars >= max_chars:
            more = len(carry) > 0 or next(blocks, None) is not None
            return "".join(pieces)[:max_chars], chars > max_chars or more
    if len(carry):
        chars += _decode_documents(carry, eot, tokenizer, pieces)
    text = "".join(pieces)
    return text[:max_chars], len(text) > max_chars


def _decode_documents(tokens: np.ndarray, eot: int, tokenizer, pieces: list[str]) -> int:
    chars = 0
    start = 0
    for end in [*np.flatnonzero(tokens == eot).tolist(), len(tokens)]:
        if end > start:
            text = tokenizer.decode(tokens[start:end].tolist())
            pieces.append(text)
            chars += len(text)
        if end < len(tokens):
            pieces.append(DOCUMENT_SEPARATOR)
            chars += 1
        start = end + 1
    return chars


def load_split(folder: str | Path, split: str) -> ShardManifest:
    """The manifest of a token-shard folder restricted to one split, checking only that
    split's shards (a folder may hold the val shards but not the train ones)."""
    folder = Path(folder)
    source = folder / MANIFEST_NAME
    if not source.is_file():
        raise ShardError(f"no {MANIFEST_NAME} in {folder}: not a token-shard folder")
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShardError(f"{source} is not valid JSON: {error}") from None
    payload["shards"] = [s for s in payload.get("shards") or [] if s.get("split") == split]
    target = folder / f".manifest-{split}.json"
    target.write_text(json.dumps(payload), encoding="utf-8")
    return load_manifest(target)
