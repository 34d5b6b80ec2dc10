"""Tokenize documents and pack them into token shards (``engine.data.shards``) for training.

    python -m engine data tokenize data/clean --tokenizer var/tok.json --out data/tokens \
        --val-fraction 0.01 --processes 4

    from engine.data.packing import tokenize_to_shards
    manifest = tokenize_to_shards(["data/clean"], load_tokenizer("var/tok.json"), "data/tokens")

Inputs are pipeline outputs (a folder with ``manifest.json`` of ``engine.records/1``: its
shards are read in manifest order) or anything the readers take (JSONL, text, Parquet,
CSV, folders; gzip/zstd). Each document lands in train or validation by a hash of its
text, so the split does not depend on the order of the inputs or the number of processes;
worker processes encode whole work units and the parent appends their tokens in unit order,
so the shards are byte-identical whatever ``processes`` is.

Throughput: documents are encoded in batches by ``tokenizers``' Rust batch encoder (which
releases the GIL and uses its own threads), while a reader thread parses the next batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.config import InputConfig
from engine.data.readers import InputError, InputProblem, WorkUnit, plan_units, read_unit
from engine.data.records import RECORDS_FORMAT
from engine.data.shards import DEFAULT_SHARD_TOKENS, ShardManifest, ShardWriter
from engine.data.tokenizers import load_tokenizer

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)
_BATCH_DOCUMENTS = 1024
_BATCH_CHARS = 256 * 1024
_CHUNK_BYTES = 32 * 2**20
_MAX_PROBLEM_EXAMPLES = 20


@dataclass
class PackStats:
    documents: int = 0
    input_bytes: int = 0
    problems: int = 0
    problem_examples: list[dict] = field(default_factory=list)


def plan_text_inputs(
    paths: Sequence[str | os.PathLike],
    text_field: str = "text",
    text_unit: str = "file",
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[list[InputConfig], list[WorkUnit]]:
    """Input specs and work units for files, folders and pipeline outputs, in a fixed order.

    Large uncompressed JSONL files (and record shards) are cut into byte ranges so that
    one big file still spreads over the processes."""
    specs: list[InputConfig] = []
    units: list[WorkUnit] = []
    for path in map(Path, paths):
        manifest = path / "manifest.json"
        if path.is_dir() and manifest.is_file():
            payload = json.loads(manifest.read_text(encoding="utf-8"))
            if payload.get("format") != RECORDS_FORMAT:
                raise InputError(
                    f"{path} holds {payload.get('format')!r} data, not cleaned records; "
                    "give the output folder of `python -m engine data run` or raw files"
                )
            specs.append(InputConfig(str(path), "jsonl", payload.get("text_field", "text")))
            shard_paths = [path / shard["name"] for shard in payload["shards"]]
        else:
            specs.append(InputConfig(str(path), "auto", text_field, text_unit=text_unit))
            shard_paths = [path]
        for shard_path in shard_paths:
            spec = dataclasses.replace(specs[-1], path=str(shard_path))
            units.extend(
                dataclasses.replace(unit, input_index=len(specs) - 1)
                for unit in plan_units([spec], chunk_bytes)
            )
    if not units:
        raise InputError("no inputs; give at least one file or folder")
    return specs, units


def iter_texts(
    specs: list[InputConfig],
    units: list[WorkUnit],
    stats: PackStats | None = None,
    strict: bool = False,
) -> Iterator[str]:
    """Document texts of the units in order; unreadable records are counted (or raise)."""
    stats = stats if stats is not None else PackStats()
    for unit in units:
        for item in read_unit(unit, specs[unit.input_index]):
            if isinstance(item, InputProblem):
                if strict:
                    raise InputError(
                        f"{item.location}: {item.problem} (strict mode stops at the first bad record)"
                    )
                stats.problems += 1
                if len(stats.problem_examples) < _MAX_PROBLEM_EXAMPLES:
                    stats.problem_examples.append(
                        {"location": item.location, "problem": item.problem}
                    )
                continue
            stats.documents += 1
            yield item.text


def is_validation(text: str, val_fraction: float) -> bool:
    """Hash split: the same text lands in the same split on every run and every machine."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def _batches(texts: Iterator[str], size: int, max_chars: int = _BATCH_CHARS) -> Iterator[list[str]]:
    """Lists of up to ``size`` documents or about ``max_chars`` characters: big enough to
    keep the encoder's threads busy, small enough that reading overlaps with encoding."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) == size or chars >= max_chars:
            yield batch
            batch = []
            chars = 0
    if batch:
        yield batch


def _prefetched(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a thread so reading and JSON parsing overlap with encoding."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                items.put(item)
        except BaseException as error:  # handed to the consumer, re-raised there
            items.put(error)
        items.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def encode_units(
    tokenizer, specs, units, val_fraction: float, stats: PackStats, strict: bool = False
) -> Iterator[tuple[list[np.ndarray], list[bool]]]:
    """(token arrays, is-validation flags) per batch of documents, in input order."""
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    for batch in _prefetched(_batches(iter_texts(specs, units, stats, strict), _BATCH_DOCUMENTS)):
        stats.input_bytes += sum(len(t) for t in batch)
        encoded = tokenizer.encode_batch(batch)
        yield (
            [np.array(ids, dtype=dtype) for ids in encoded],
            [is_validation(t, val_fraction) for t in batch],
        )


# ---- worker processes: one unit each, tokens into a side file, merged in unit order ------
_worker_state: dict = {}


def _init_worker(
    tokenizer_path: str, specs, val_fraction: float, strict: bool, work_dir: str
) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _worker_state.update(
        tokenizer=load_tokenizer(tokenizer_path),
        specs=specs,
        val_fraction=val_fraction,
        strict=strict,
        work_dir=work_dir,
    )
    _worker_state["dtype"] = (
        np.uint16 if _worker_state["tokenizer"].vocab_size <= 2**16 else np.uint32
    )


def _encode_unit(task: tuple[int, WorkUnit]) -> tuple[int, PackStats]:
    index, unit = task
    state = _worker_state
    stats = PackStats()
    tokens, lengths, flags = [], [], []
    for arrays, is_val in encode_units(
        state["tokenizer"], state["specs"], [unit], state["val_fraction"], stats, state["strict"]
    ):
        tokens.extend(arrays)
        lengths.extend(len(a) for a in arrays)
        flags.extend(is_val)
    stem = Path(state["work_dir"]) / f"unit-{index:06d}"
    np.save(f"{stem}.tokens.npy", np.concatenate(tokens) if tokens else np.zeros(0, state["dtype"]))
    np.save(f"{stem}.lengths.npy", np.array(lengths, dtype=np.int64))
    np.save(f"{stem}.val.npy", np.array(flags, dtype=bool))
    return index, stats


def _merge(total: PackStats, part: PackStats) -> None:
    total.documents += part.documents
    total.input_bytes += part.input_bytes
    total.problems += part.problems
    room = _MAX_PROBLEM_EXAMPLES - len(total.problem_examples)
    total.problem_examples.extend(part.problem_examples[:room])


def tokenize_to_shards(
    inputs: Sequence[str | os.PathLike],
    tokenizer_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    processes: int = 1,
    text_field: str = "text",
    text_unit: str = "file",
    strict: bool = False,
    progress: ProgressCallback | None = None,
) -> tuple[ShardManifest, PackStats]:
    """Encode every document of ``inputs`` and write train/val token shards to ``out_dir``.

    The tokenizer file is copied next to the shards (``tokenizer.json``) and named in the
    manifest, so a trainer needs only the folder. Raises ``InputError`` for unreadable
    inputs and ``ValueError`` when nothing was tokenized.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    tokenizer = load_tokenizer(tokenizer_path)
    specs, units = plan_text_inputs(inputs, text_field, text_unit)
    total_bytes = sum(_unit_size(u) for u in units)
    progress = progress or (lambda done, total: None)
    stats = PackStats()
    out_dir = Path(out_dir)
    metadata = {
        "inputs": [str(p) for p in inputs],
        "val_fraction": val_fraction,
        "tokenizer_kind": tokenizer.kind,
    }
    writer = ShardWriter(
        out_dir,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        shard_tokens=shard_tokens,
        tokenizer_file="tokenizer.json",
        metadata=metadata,
    )
    with writer:
        tokenizer.save(out_dir / ".tokenizer.json.tmp")
        os.replace(out_dir / ".tokenizer.json.tmp", out_dir / "tokenizer.json")
        if processes <= 1 or len(units) == 1:
            for arrays, flags in encode_units(tokenizer, specs, units, val_fraction, stats, strict):
                for tokens, is_val in zip(arrays, flags, strict=True):
                    writer.add(tokens, split="val" if is_val else "train")
                progress(min(stats.input_bytes, total_bytes), total_bytes)
        else:
            _tokenize_in_processes(
                writer,
                str(tokenizer_path),
                specs,
                units,
                val_fraction,
                strict,
                processes,
                stats,
                progress,
                total_bytes,
            )
        if stats.documents == 0:
            raise ValueError(
                f"no documents to tokenize in {', '.join(map(str, inputs))} ({stats.problems} unreadable records)"
            )
        writer.metadata.update(documents=stats.documents, input_problems=stats.problems)
    return writer.manifest, stats


def _unit_size(unit: WorkUnit) -> int:
    return (unit.end - unit.start) if unit.end >= 0 else os.path.getsize(unit.path)


def _tokenize_in_processes(
    writer,
    tokenizer_path,
    specs,
    units,
    val_fraction,
    strict,
    processes,
    stats,
    progress,
    total_bytes,
) -> None:
    work_dir = tempfile.mkdtemp(prefix=".tokenize-", dir=writer.out_dir)
    try:
        context = multiprocessing.get_context("spawn")
        done_bytes = 0
        with context.Pool(
            min(processes, len(units)),
            _init_worker,
            (tokenizer_path, specs, val_fraction, strict, work_dir),
        ) as pool:
            # imap keeps unit order: unit i is appended before unit i+1, whoever encoded it.
            for index, part in pool.imap(_encode_unit, list(enumerate(units))):
                _merge(stats, part)
                stem = Path(work_dir) / f"unit-{index:06d}"
                tokens = np.load(f"{stem}.tokens.npy")
                lengths = np.load(f"{stem}.lengths.npy")
                flags = np.load(f"{stem}.val.npy")
                if len(lengths) == 0:
                    continue
                for piece, is_val in zip(
                    np.split(tokens, np.cumsum(lengths)[:-1]), flags, strict=True
                ):
                    writer.add(piece, split="val" if is_val else "train")
                done_bytes += _unit_size(units[index])
                progress(done_bytes, total_bytes)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
