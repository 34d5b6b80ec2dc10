"""Token shards: the file format between the data pipeline and the trainers.

Format (``engine.token-shards/1``), all in one folder::

    manifest.json          written last; a folder without it is not a data set
    train_00000.bin ...    raw little-endian token ids, uint16 (uint32 when vocab_size > 65535)
    val_00000.bin ...
    tokenizer.json         optional; named by the manifest's "tokenizer" key

``manifest.json``::

    {"format": "engine.token-shards/1", "vocab_size": 68, "eot_id": 0, "dtype": "uint16",
     "tokenizer": "tokenizer.json" | null, "metadata": {...},
     "splits": {"train": {"num_tokens": N, "num_documents": D}, "val": {...}},
     "shards": [{"path": "train_00000.bin", "split": "train", "sha256": "...",
                 "num_tokens": N, "dtype": "uint16"}, ...]}

Every document is *preceded* by the end-of-text token (as GPT-2 and nanoGPT's
``fineweb.py`` do), so the token stream of a split reads ``eot doc eot doc ...``.
Documents may span two shards: a split is one token stream cut into shards of
``shard_tokens`` tokens (the last one shorter).

Writing (both splits through one writer; each shard goes to a hidden temporary name,
is renamed when complete, and the manifest is renamed into place last, so an
interrupted run leaves nothing that :func:`load_manifest` accepts)::

    with ShardWriter("var/data/tiny", vocab_size=tok.vocab_size, eot_id=tok.eot_id,
                     tokenizer_file="tokenizer.json") as writer:
        tok.save("var/data/tiny/tokenizer.json")
        for doc in docs:
            writer.add(tok.encode(doc), split="train")   # or split="val"
    manifest = writer.manifest                           # also returned by close()

Reading::

    manifest = load_manifest("var/data/tiny", verify_checksums=True)  # ShardError if bad
    loader = TokenLoader(manifest, "train", batch_size=12, block_size=64, seed=1337,
                         rank=0, world_size=1, order="random")   # or order="sequential"
    x, y = loader.next_batch()       # int64 numpy arrays (batch_size, block_size); y = x shifted
    state = loader.state_dict()      # JSON-able; TokenLoader(...).load_state_dict(state) resumes

Distributed reading: the loader draws the *global* batch (``batch_size * world_size``
windows) from one generator shared by all ranks and each rank reads only its own rows.
A run on 2 ranks with batch 6 therefore sees exactly the data of a run on 1 rank with
batch 12, which is what makes DDP runs comparable to (and resumable as) single-process runs.

This module needs only numpy: it is shared by the pipeline (no torch) and the trainers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

FORMAT = "engine.token-shards/1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB at uint16: large sequential reads, few files
Order = Literal["random", "sequential"]


class ShardError(ValueError):
    """A shard folder is missing, incomplete or corrupt; the message names the file."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (GPT-2's 50257 does), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _dtype_name(dtype: np.dtype) -> str:
    return "uint16" if dtype.itemsize == 2 else "uint32"


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the manifest's folder
    split: str
    sha256: str
    num_tokens: int
    dtype: str  # "uint16" | "uint32"


@dataclass
class ShardManifest:
    """The parsed ``manifest.json`` plus the folder it lives in (``root``)."""

    root: Path
    vocab_size: int
    eot_id: int
    dtype: str
    shards: list[ShardInfo]
    tokenizer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)

    def shards_for(self, split: str) -> list[ShardInfo]:
        return [shard for shard in self.shards if shard.split == split]

    def num_tokens(self, split: str) -> int:
        return sum(shard.num_tokens for shard in self.shards_for(split))

    @property
    def tokenizer_path(self) -> Path | None:
        return self.root / self.tokenizer if self.tokenizer else None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "dtype": self.dtype,
            "tokenizer": self.tokenizer,
            "metadata": self.metadata,
            "splits": self.splits,
            "shards": [asdict(shard) for shard in self.shards],
        }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Append documents (token id sequences) to the train/val token streams of a folder.

    ``add`` prepends end-of-text to each document and refuses ids outside the vocabulary.
    ``close`` (or leaving the ``with`` block normally) flushes the last shards and writes
    the manifest; leaving it by an exception removes everything this writer wrote.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        vocab_size: int,
        eot_id: int,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        tokenizer_file: str | None = None,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
    ):
        if not 0 <= eot_id < vocab_size:
            raise ValueError(f"eot_id {eot_id} is outside the vocabulary of size {vocab_size}")
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be at least 1, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        if (self.out_dir / MANIFEST_NAME).exists() and not overwrite:
            raise FileExistsError(
                f"{self.out_dir / MANIFEST_NAME} exists; pick a new folder or pass overwrite=True"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.dtype = dtype_for_vocab(vocab_size)
        self.shard_tokens = shard_tokens
        self.tokenizer_file = tokenizer_file
        self.metadata = dict(metadata or {})
        self._pending: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
        self._pending_tokens = dict.fromkeys(SPLITS, 0)
        self._documents = dict.fromkeys(SPLITS, 0)
        self._written: list[ShardInfo] = []
        self.manifest: ShardManifest | None = None

    def add(self, tokens: Sequence[int] | np.ndarray, *, split: str = "train") -> None:
        """Append one document to ``split`` ("train" or "val")."""
        if split not in self._pending:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.manifest is not None:
            raise RuntimeError("this ShardWriter is closed")
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError(f"a document is a 1-D sequence of token ids, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids.max() if ids.max() >= self.vocab_size else ids.min())
            raise ValueError(
                f"token id {bad} is outside the vocabulary of size {self.vocab_size}; "
                "was the text encoded with a different tokenizer?"
            )
        document = np.empty(ids.size + 1, dtype=self.dtype)
        document[0] = self.eot_id
        document[1:] = ids
        self._pending[split].append(document)
        self._pending_tokens[split] += document.size
        self._documents[split] += 1
        while self._pending_tokens[split] >= self.shard_tokens:
            self._flush(split, self.shard_tokens)

    def add_many(self, documents: Iterable[Sequence[int]], *, split: str = "train") -> None:
        for tokens in documents:
            self.add(tokens, split=split)

    def _flush(self, split: str, count: int) -> None:
        stream = np.concatenate(self._pending[split])
        head, rest = stream[:count], stream[count:]
        self._pending[split] = [rest] if rest.size else []
        self._pending_tokens[split] = int(rest.size)
        index = sum(1 for shard in self._written if shard.split == split)
        name = f"{split}_{index:05d}.bin"
        tmp = self.out_dir / f".{name}.tmp"
        payload = head.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.out_dir / name)
        self._written.append(
            ShardInfo(
                path=name,
                split=split,
                sha256=hashlib.sha256(payload).hexdigest(),
                num_tokens=int(head.size),
                dtype=_dtype_name(self.dtype),
            )
        )

    def close(self) -> ShardManifest:
        """Flush the partial shards and write ``manifest.json`` (last, atomically)."""
        if self.manifest is not None:
            return self.manifest
        for split in SPLITS:
            if self._pending_tokens[split]:
                self._flush(split, self._pending_tokens[split])
        if self.tokenizer_file and not (self.out_dir / self.tokenizer_file).is_file():
            raise ShardError(
                f"tokenizer file {self.tokenizer_file!r} named for the manifest is not in {self.out_dir}"
            )
        manifest = ShardManifest(
            root=self.out_dir,
            vocab_size=self.vocab_size,
            eot_id=self.eot_id,
            dtype=_dtype_name(self.dtype),
            shards=list(self._written),
            tokenizer=self.tokenizer_file,
            metadata=self.metadata,
            splits={
                split: {
                    "num_tokens": sum(s.num_tokens for s in self._written if s.split == split),
                    "num_documents": self._documents[split],
                }
                for split in SPLITS
            },
        )
        _atomic_write_text(self.out_dir / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=1))
        self.manifest = manifest
        return manifest

    def abort(self) -> None:
        """Remove the shards written so far (there is no manifest yet)."""
        for shard in self._written:
            (self.out_dir / shard.path).unlink(missing_ok=True)
        for tmp in self.out_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self._written.clear()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(payload: dict[str, Any], key: str, where: Path) -> Any:
    if key not in payload:
        raise ShardError(f"{where} has no {key!r} key; it is not a token-shard manifest")
    return payload[key]


def load_manifest(path: str | Path, *, verify_checksums: bool = False) -> ShardManifest:
    """Read a shard folder (or its ``manifest.json``) and check every shard is there.

    Always checked: each shard exists and its size matches its token count. With
    ``verify_checksums`` the sha256 of every shard is recomputed (reads all the data).
    Raises :class:`ShardError` naming the missing or corrupt file.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest_path.is_file():
        raise ShardError(
            f"no {MANIFEST_NAME} at {manifest_path}; the shards are missing or were not "
            "written completely (run the data pipeline again)"
        )
    try:
        payload = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShardError(f"{manifest_path} is not valid JSON: {error}") from None
    if payload.get("format") != FORMAT:
        raise ShardError(
            f"{manifest_path} has format {payload.get('format')!r}, expected {FORMAT!r}"
        )
    root = manifest_path.parent
    shards = []
    for entry in _require(payload, "shards", manifest_path):
        try:
            shard = ShardInfo(**entry)
        except TypeError as error:
            raise ShardError(f"{manifest_path}: bad shard entry {entry!r} ({error})") from None
        _check_shard(root, shard, verify_checksums)
        shards.append(shard)
    return ShardManifest(
        root=root,
        vocab_size=int(_require(payload, "vocab_size", manifest_path)),
        eot_id=int(_require(payload, "eot_id", manifest_path)),
        dtype=_require(payload, "dtype", manifest_path),
        shards=shards,
        tokenizer=payload.get("tokenizer"),
        metadata=payload.get("metadata") or {},
        splits=payload.get("splits") or {},
    )


def _check_shard(root: Path, shard: ShardInfo, verify_checksums: bool) -> None:
    file = root / shard.path
    if not file.is_file():
        raise ShardError(f"shard {file} listed in the manifest is missing")
    itemsize = np.dtype(shard.dtype).itemsize
    expected = shard.num_tokens * itemsize
    actual = file.stat().st_size
    if actual != expected:
        raise ShardError(
            f"shard {file} is corrupt: {actual} bytes, the manifest says {shard.num_tokens} "
            f"{shard.dtype} tokens ({expected} bytes)"
        )
    if verify_checksums and _sha256_of(file) != shard.sha256:
        raise ShardError(f"shard {file} is corrupt: its sha256 does not match the manifest")


class TokenLoader:
    """Batches of (x, y) windows from one split, memory-mapped, resumable, rank-aware.

    ``order="random"``: each window starts at a uniformly random offset of the split's
    token stream (nanoGPT's sampling), drawn by a seeded ``numpy`` generator.
    ``order="sequential"``: consecutive windows (stride ``block_size``) from a saved
    position, wrapping to the start (``epoch`` counts the wraps).
    """

    def __init__(
        self,
        manifest: ShardManifest | str | Path,
        split: str,
        *,
        batch_size: int,
        block_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        order: Order = "random",
    ):
        if not isinstance(manifest, ShardManifest):
            manifest = load_manifest(manifest)
        if order not in ("random", "sequential"):
            raise ValueError(f"order must be 'random' or 'sequential', got {order!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.manifest = manifest
        self.split = split
        self.batch_size = batch_size
        self.block_size = block_size
        self.rank = rank
        self.world_size = world_size
        self.order = order
        self.seed = seed
        shards = manifest.shards_for(split)
        self._maps = [
            np.memmap(
                manifest.root / shard.path, dtype=np.dtype(shard.dtype).newbyteorder("<"), mode="r"
            )
            for shard in shards
            if shard.num_tokens
        ]
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])
        self.num_tokens = int(self._starts[-1])
        if self.num_tokens < block_size + 1:
            raise ShardError(
                f"split {split!r} of {manifest.root} has {self.num_tokens} tokens, fewer than "
                f"one window of block_size + 1 = {block_size + 1}"
            )
        self._rng = np.random.default_rng(seed)
        self.position = 0
        self.epoch = 0

    def _read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the split's stream, across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while filled < length:
            offset = start + filled - int(self._starts[shard])
            piece = self._maps[shard][offset : offset + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out

    def _global_starts(self) -> np.ndarray:
        count = self.batch_size * self.world_size
        if self.order == "random":
            return self._rng.integers(0, self.num_tokens - self.block_size, size=count)
        starts = np.empty(count, dtype=np.int64)
        for i in range(count):
            if self.position + self.block_size + 1 > self.num_tokens:
                self.position = 0
                self.epoch += 1
            starts[i] = self.position
            self.position += self.block_size
        return starts

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of shape (batch_size, block_size); y[i, t] = x[i, t + 1] of the stream."""
        starts = self._global_starts()
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = np.stack([self._read(int(s), self.block_size + 1) for s in mine])
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with the very next batch (JSON-serialisable)."""
        return {
            "split": self.split,
            "order": self.order,
            "position": self.position,
            "epoch": self.epoch,
            "rng": self._rng.bit_generator.state,
            "global_batch": self.batch_size * self.world_size,
            "block_size": self.block_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("split", "order", "block_size", "global_batch"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise ValueError(
                    f"data loader state has {key}={state.get(key)!r} but this loader has {mine!r}; "
                    "resume with the same data settings"
                )
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
        self._rng.bit_generator.state = state["rng"]
