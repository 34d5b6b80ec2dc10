"""Cut erased documents out of token shards (``engine.token-shards/1``) without re-tokenizing.

    counts = eot_counts(load_manifest("clean/tokens"))
    cut = cut_documents("clean/tokens", "erased/tokens", {"train": [17, 4021], "val": [3]})
    cut.affected, cut.unchanged, cut.documents_removed, cut.tokens_removed

Why this is exact: a split's shards are one stream ``eot doc eot doc ...`` in which every
document was encoded on its own (engine.data.packing encodes per document, in record
order, and picks the split by a hash of the text). Document ``k`` of a split is therefore
the span from its split's ``k``-th end-of-text token to the next one, and the stream
without it is, token for token, what tokenizing the records without it gives with the same
tokenizer. Re-chunking that stream at the same shard size gives the same shard files.

That holds only when every end-of-text token starts a document (no text encoded to one)
and every record became one document; :func:`cut_refusal` checks both, and the caller
falls back to a full rebuild otherwise.

Shards before a split's first affected one are reused (hard links); the rest of the split
is streamed through memory maps in blocks and written again at the same shard size, each
shard under a hidden temporary name, fsynced and renamed; ``manifest.json`` comes last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.erasure_files import reuse_file
from engine.data.shards import (
    MANIFEST_NAME,
    SPLITS,
    ShardInfo,
    ShardManifest,
    load_manifest,
)
from engine.data.subject_scan import EMAIL, normalise_email, normalise_text

_BLOCK_TOKENS = 1 << 24  # 32 MB of uint16 per read: bounded memory whatever the split's size
MIN_VOCAB_TOKEN_CHARS = 6  # shorter pieces ("ann", "lee") are everybody's, not a person's


class CutNotExact(ValueError):
    """The shards cannot be cut exactly; the message is the reason (a rebuild is needed)."""


@dataclass
class TokenCut:
    affected: list[str]  # shard paths written again (the stream shifted from there on)
    unchanged: list[str]  # shard paths reused as they are (hard links)
    documents_removed: dict[str, int] = field(default_factory=dict)
    tokens_removed: int = 0
    manifest: ShardManifest | None = None


def _map(manifest: ShardManifest, shard: ShardInfo) -> np.ndarray:
    dtype = np.dtype(shard.dtype).newbyteorder("<")
    if not shard.num_tokens:
        return np.zeros(0, dtype=dtype)
    return np.memmap(manifest.root / shard.path, dtype=dtype, mode="r")


def _blocks(tokens: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(tokens), _BLOCK_TOKENS):
        yield start, tokens[start : start + _BLOCK_TOKENS]


def eot_counts(manifest: ShardManifest) -> dict[str, list[int]]:
    """End-of-text tokens per shard of each split, counted in blocks (no split in memory)."""
    counts: dict[str, list[int]] = {}
    for split in SPLITS:
        counts[split] = [
            sum(
                int(np.count_nonzero(block == manifest.eot_id))
                for _, block in _blocks(_map(manifest, s))
            )
            for s in manifest.shards_for(split)
        ]
    return counts


def cut_refusal(manifest: ShardManifest, records: int, counts: dict[str, list[int]]) -> str:
    """Why a cut would not equal re-tokenizing ("" when it would)."""
    if "val_fraction" not in manifest.metadata:
        return "the token shards' metadata has no val_fraction (which split a document is in)"
    documents = manifest.metadata.get("documents")
    if documents != records:
        return (
            f"the token shards hold {documents} documents for {records} records (some records "
            "were not tokenized), so a record's place in the stream is unknown"
        )
    for split in SPLITS:
        expected = manifest.splits.get(split, {}).get("num_documents", 0)
        if sum(counts[split]) != expected:
            return (
                f"split {split} has {sum(counts[split])} end-of-text tokens for {expected} "
                "documents (a text encoded to end-of-text), so documents cannot be told apart"
            )
    return ""


def tokenizer_subject_tokens(tokenizer_path: Path, identifiers: Sequence[str]) -> int:
    """How many vocabulary tokens of ``MIN_VOCAB_TOKEN_CHARS`` or more characters, normalised
    as the subject scan does, lie inside a normalised form of an identifier or contain one:
    a tokenizer that learnt the subject's name or e-mail as a token must be trained again."""
    from engine.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    forms = _identifier_forms(identifiers)
    found = 0
    for token_id in range(tokenizer.vocab_size):
        piece = normalise_text(tokenizer.decode([token_id]))
        if len(piece) < MIN_VOCAB_TOKEN_CHARS:
            continue
        if any(_overlaps(piece, form, personal) for form, personal in forms):
            found += 1
    return found


def _identifier_forms(identifiers: Sequence[str]) -> list[tuple[str, int]]:
    """(form, length of its personal prefix): an address's domain names a provider, not a
    person, so a token that lies wholly inside it ("example.org") does not count."""
    forms: list[tuple[str, int]] = []
    for identifier in identifiers:
        form = normalise_text(identifier)
        if not form:
            continue
        if EMAIL.fullmatch(form):
            for address in {form, normalise_email(form)}:
                forms.append((address, address.rindex("@")))
        else:
            forms.append((form, len(form)))
    return forms


def _overlaps(piece: str, form: str, personal: int) -> bool:
    if form in piece:
        return True
    start = form.find(piece)
    while start != -1:
        if start < personal:
            return True
        start = form.find(piece, start + 1)
    return False


def _document_spans(
    manifest: ShardManifest, split: str, counts: list[int], ordinals: Sequence[int]
) -> list[tuple[int, int]]:
    """[start, end) in the split's stream of each document: its end-of-text to the next."""
    shards = manifest.shards_for(split)
    starts = np.cumsum([0] + [s.num_tokens for s in shards])
    before = np.cumsum([0, *counts])  # end-of-text tokens before each shard
    total = int(before[-1])
    wanted = sorted({o for d in ordinals for o in (d, d + 1) if o < total})
    positions: dict[int, int] = {}
    for index in sorted({int(np.searchsorted(before, o, side="right")) - 1 for o in wanted}):
        ranks = [o - int(before[index]) for o in wanted if before[index] <= o < before[index + 1]]
        seen = 0
        for offset, block in _blocks(_map(manifest, shards[index])):
            hits = np.flatnonzero(block == manifest.eot_id)
            for rank in ranks:
                if seen <= rank < seen + len(hits):
                    positions[int(before[index]) + rank] = (
                        int(starts[index]) + offset + int(hits[rank - seen])
                    )
            seen += len(hits)
    end = int(starts[-1])
    return [(positions[d], positions.get(d + 1, end)) for d in sorted(ordinals)]


class _SplitWriter:
    """Writes a split's stream from shard ``first`` on, cut at ``shard_tokens``."""

    def __init__(self, out_dir: Path, split: str, first: int, shard_tokens: int, dtype: str):
        self.out_dir, self.split, self.index = out_dir, split, first
        self.shard_tokens, self.dtype = shard_tokens, dtype
        self.written: list[ShardInfo] = []
        self._handle = None
        self._digest = hashlib.sha256()
        self._filled = 0

    def _name(self) -> str:
        return f"{self.split}_{self.index:05d}.bin"

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._handle is None:
                self._handle = open(self.out_dir / f".{self._name()}.tmp", "wb")  # noqa: SIM115
            take = tokens[: self.shard_tokens - self._filled]
            payload = take.tobytes()
            self._handle.write(payload)
            self._digest.update(payload)
            self._filled += take.size
            tokens = tokens[take.size :]
            if self._filled == self.shard_tokens:
                self._close()

    def _close(self) -> None:
        name = self._name()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.out_dir / f".{name}.tmp", self.out_dir / name)
        self.written.append(
            ShardInfo(name, self.split, self._digest.hexdigest(), self._filled, self.dtype)
        )
        self._handle, self._digest, self._filled = None, hashlib.sha256(), 0
        self.index += 1

    def finish(self) -> list[ShardInfo]:
        if self._handle is not None:
            self._close()
        return self.written


def _cut_split(
    manifest: ShardManifest,
    out_dir: Path,
    split: str,
    counts: list[int],
    ordinals: Sequence[int],
    texts: Sequence[str] | None,
    cut: TokenCut,
) -> tuple[list[ShardInfo], int]:
    """The split's new shards and its token count; reused shards are linked into out_dir."""
    shards = manifest.shards_for(split)
    if not ordinals:
        for shard in shards:
            reuse_file(manifest.root / shard.path, out_dir / shard.path)
            cut.unchanged.append(shard.path)
        return list(shards), manifest.num_tokens(split)
    spans = _document_spans(manifest, split, counts, ordinals)
    starts = np.cumsum([0] + [s.num_tokens for s in shards])
    maps = [_map(manifest, s) for s in shards]
    if texts is not None:
        _check_spans(manifest, maps, starts, spans, texts)
    first = int(np.searchsorted(starts, spans[0][0], side="right")) - 1
    for shard in shards[:first]:  # every shard before the last is full: boundaries hold
        reuse_file(manifest.root / shard.path, out_dir / shard.path)
        cut.unchanged.append(shard.path)
    cut.affected += [s.path for s in shards[first:]]
    # ShardWriter cuts every shard but the last at shard_tokens; one shard says no more
    # than that shard_tokens was at least its length, and the shorter stream fits in one.
    shard_tokens = shards[0].num_tokens if len(shards) > 1 else max(1, shards[0].num_tokens)
    writer = _SplitWriter(out_dir, split, first, shard_tokens, shards[0].dtype)
    keep_from = int(starts[first])
    for start, end in [*spans, (int(starts[-1]), int(starts[-1]))]:
        for piece in _stream(maps, starts, keep_from, start):
            writer.write(piece)
        keep_from = end
    new = writer.finish()
    cut.documents_removed[split] = len(spans)
    cut.tokens_removed += sum(end - start for start, end in spans)
    return list(shards[:first]) + new, sum(s.num_tokens for s in shards[:first] + new)


def _check_spans(manifest, maps, starts, spans, texts: Sequence[str]) -> None:
    """Each span must be end-of-text + the erased text encoded: a cut at a wrong place
    would remove someone else's document and leave the subject's."""
    from engine.data.tokenizers import load_tokenizer

    if manifest.tokenizer_path is None:
        raise CutNotExact("the token shards name no tokenizer to check the erased documents")
    tokenizer = load_tokenizer(manifest.tokenizer_path)
    for (start, end), text in zip(spans, texts, strict=True):
        found = np.concatenate([np.zeros(0, np.int64), *_stream(maps, starts, start + 1, end)])
        if not np.array_equal(found, np.asarray(tokenizer.encode(text), dtype=np.int64)):
            raise CutNotExact(
                "an erased record's tokens are not where its place in the records puts them"
            )


def _stream(maps, starts, begin: int, end: int) -> Iterator[np.ndarray]:
    """Tokens [begin, end) of a split's stream, in blocks, across shard boundaries."""
    position = begin
    while position < end:
        index = int(np.searchsorted(starts, position, side="right")) - 1
        offset = position - int(starts[index])
        stop = min(end - int(starts[index]), len(maps[index]), offset + _BLOCK_TOKENS)
        yield np.asarray(maps[index][offset:stop])
        position += stop - offset


def cut_documents(
    tokens_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    ordinals: dict[str, Sequence[int]],
    counts: dict[str, list[int]] | None = None,
    texts: dict[str, Sequence[str]] | None = None,
) -> TokenCut:
    """Write ``out_dir`` (a new shard folder) as ``tokens_dir`` without the documents
    numbered ``ordinals`` (per split, 0-based, in stream order).

    ``counts`` are :func:`eot_counts` when the caller has them; ``texts`` (per split, in
    the order of the sorted ordinals) are the erased documents' texts, checked against
    the spans before anything is cut. Raises :class:`CutNotExact` when the end-of-text
    tokens do not match the documents or a span does not hold its text,
    ``FileExistsError`` when ``out_dir`` holds a manifest."""
    manifest = load_manifest(tokens_dir)
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_NAME).exists():
        raise FileExistsError(f"{out_dir / MANIFEST_NAME} exists; cut into a new folder")
    counts = counts if counts is not None else eot_counts(manifest)
    for split in SPLITS:
        documents = manifest.splits.get(split, {}).get("num_documents", 0)
        if sum(counts[split]) != documents:
            raise CutNotExact(
                f"split {split} has {sum(counts[split])} end-of-text tokens for {documents} documents"
            )
        bad = [o for o in ordinals.get(split, ()) if not 0 <= o < documents]
        if bad:
            raise ValueError(f"split {split} has {documents} documents; no document {bad[0]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    cut = TokenCut([], [])
    new: dict[str, ShardInfo] = {}
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        chosen = sorted(set(ordinals.get(split, ())))
        given = None if texts is None else texts.get(split, [])
        shards, tokens = _cut_split(manifest, out_dir, split, counts[split], chosen, given, cut)
        new.update((s.path, s) for s in shards)
        documents = manifest.splits.get(split, {}).get("num_documents", 0) - len(chosen)
        splits[split] = {"num_tokens": tokens, "num_documents": documents}
    if manifest.tokenizer:
        reuse_file(manifest.root / manifest.tokenizer, out_dir / manifest.tokenizer)
    metadata = dict(manifest.metadata)
    if "documents" in metadata:
        metadata["documents"] -= sum(cut.documents_removed.values())
    # The stream only shrinks, so every new shard has an old one's name: keep their order.
    result = ShardManifest(
        root=out_dir,
        vocab_size=manifest.vocab_size,
        eot_id=manifest.eot_id,
        dtype=manifest.dtype,
        shards=[new[s.path] for s in manifest.shards if s.path in new],
        tokenizer=manifest.tokenizer,
        metadata=metadata,
        splits=splits,
    )
    order = [s.path for s in manifest.shards]
    cut.affected.sort(key=order.index)
    cut.unchanged.sort(key=order.index)
    _write_manifest(out_dir, result)
    cut.manifest = result
    return cut


def _write_manifest(out_dir: Path, manifest: ShardManifest) -> None:
    tmp = out_dir / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest.to_json(), indent=1))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out_dir / MANIFEST_NAME)
