"""Erase a data subject (GDPR Art. 17) from a dataset folder: find their records, then write
the folder again without them.

    from engine.data.erasure import erase_subject, find_subject

    report = find_subject("data/clean", subject_hashes=[keyed_hash])          # via the index
    report = find_subject("data/raw", subject_hashes=[h], subject_field="user")  # streaming
    report = find_subject("data/raw", identifiers=["ann@x.org"], scan_budget_bytes=2**30)
    result = erase_subject("data/clean", "data/clean-erased", subject_hashes=[keyed_hash])

    python -m engine data erase data/clean --out data/clean-erased --hash 3f1c...
    python -m engine data erase data/raw --out data/raw-erased --id ann@x.org --scan-budget 2GB

Three ways of finding a subject, chosen by the folder:

* *index*: a pipeline output (``manifest.json`` of ``engine.records/1``) with a subject
  index, or a raw upload with the index built at ingestion (``subject_index.json``,
  engine.data.raw_subject_index): one binary search per hash, no record is read.
* *field*: raw JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``/``.zst``) whose records
  name the subject in ``subject_field``, uploaded before raw indexes: one streaming pass
  that hashes each record's field the way the index does and compares it with the
  subject's hashes.
* *scan*: data with no subject field ("not indexed"): a full-text search of every record
  for the raw identifiers in normalised forms (case, whitespace, e-mail dots and
  ``+tags``: engine.data.subject_scan), bounded by ``scan_budget_bytes`` of decoded input. When the
  budget runs out the report says ``complete: false``, names the files left unread, and
  :func:`erase_subject` refuses to rewrite: an erasure of what was not searched would be
  a false promise.

A *record* is a JSONL line, a line of a plain-text file, or a row of a record shard.
Reports carry positions and counts only, never the matched text.

The rewrite writes a new folder (a hidden sibling, renamed into place when complete, so
a crash leaves nothing or a whole result) in which every other record is byte-identical
and in order. Record shards and raw files keep their name, format and compression (a
raw upload's subject index loses the subject's rows, later lines moving up); unaffected
files are hard links (or copies) of the originals and are reported
``unchanged`` so the caller can reuse their stored objects. For a pipeline output the
subject index loses the subject's rows (later rows of an affected shard move up),
``manifest.json`` gets the new counts, sizes and hashes, and ``report.json`` loses its
example snippets (they quote records, the subject's perhaps); ``report.txt`` is dropped;
any other file is linked unchanged and not searched (a residue scan's job).
Token shards (``tokens/``) are one token stream per split, ``eot doc eot doc ...``, each
document encoded on its own: the erased documents' spans are cut out of the stream and the
rest of the split is re-chunked at the same shard size (engine.data.token_cut), which
gives exactly the shards that re-tokenizing the erased records would. Shards before a
split's first cut are linked ``unchanged``; the rest, ``manifest.json`` and the kept
``tokenizer.json`` are in ``files`` under ``tokens/``; ``token_shards`` says
``method: "cut"`` with the shards affected, the documents and tokens removed. Where a cut
would not be exact (an end-of-text token inside a text, records that were not tokenized,
no ``val_fraction``) or the tokenizer's vocabulary holds a piece of the subject's
identifiers (checked only when raw identifiers are given), ``tokens/`` is left out, the
report says ``rebuild: ["tokens"]`` (``["tokens", "tokenizer"]``) and ``token_shards``
gives ``method: "rebuild"``, the reason and which shards held the subject.
Gzip output is written with mtime 0 and zstd at level 3 as
the pipeline does, so the same input and subject always give byte-identical files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from engine.data.erasure_files import (
    TOKENS_DIR,
    copy_without_lines,
    erased_documents,
    fsync_dir,
    reuse_file,
    rewrite_report,
    rewrite_subject_index,
    token_shard_impact,
)
from engine.data.raw_subject_index import (
    RAW_INDEX_FILES,
    field_needle,
    field_value,
    find_in_raw_index,
    load_raw_index,
    may_name_someone,
    rewrite_raw_index,
)
from engine.data.readers import open_binary
from engine.data.records import MANIFEST, RECORDS_FORMAT, sha256_of
from engine.data.shards import FORMAT as TOKEN_SHARDS_FORMAT
from engine.data.shards import MANIFEST_NAME, load_manifest
from engine.data.subject_index import (
    SubjectKeyError,
    check_key,
    hash_subject,
)
from engine.data.subject_scan import SubjectMatcher, scan_stream
from engine.data.token_cut import (
    CutNotExact,
    TokenCut,
    cut_documents,
    cut_refusal,
    eot_counts,
    tokenizer_subject_tokens,
)

DEFAULT_SCAN_BUDGET = 2**30  # decoded bytes a "not indexed" scan may read (1 GiB)
Method = Literal["index", "field", "scan"]
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TEXT_SUFFIXES = (".txt", ".text", ".md")
_COMPRESSIONS = (".gz", ".zst")


class ErasureError(ValueError):
    """The erasure cannot be done as asked; the message says what to give or change."""


# ---- subject hashes -------------------------------------------------------------------------
def subject_hash(subject_id: str, *, salt: str = "", key: bytes | None = None) -> str:
    """The hash the subject index holds for ``subject_id``: keyed (HMAC) when ``key`` is given."""
    return hash_subject(subject_id, salt, key=key)


# ---- find ------------------------------------------------------------------------------------
@dataclass
class FileFindings:
    """One file's hits: ``positions`` are 1-based line numbers (raw files) or 0-based rows
    (record shards); ``searched`` is false for a file the scan budget did not reach."""

    name: str
    method: Method
    positions: list[int] = field(default_factory=list)
    lines_read: int = 0  # 0 for the index method, which reads no records
    bytes_scanned: int = 0
    searched: bool = True

    @property
    def hits(self) -> int:
        return len(self.positions)


@dataclass
class FindReport:
    folder: str
    kind: Literal["records", "raw"]
    unit: Literal["row", "line"]
    files: list[FileFindings]
    scan_budget_bytes: int
    complete: bool = True
    not_searched: list[str] = field(default_factory=list)  # with why, e.g. "a.parquet (format)"

    @property
    def hits(self) -> int:
        return sum(f.hits for f in self.files)

    @property
    def bytes_scanned(self) -> int:
        return sum(f.bytes_scanned for f in self.files)

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload.update(hits=self.hits, bytes_scanned=self.bytes_scanned)
        for entry in payload["files"]:
            entry["hits"] = len(entry["positions"])
        return payload


def _hashes(subject_hashes: Iterable[str], identifiers: Iterable[str], salt, key) -> set[str]:
    hashes = set()
    for value in subject_hashes:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ErasureError(f"subject hash {value[:12]!r}... is not 64 hex digits (sha256)")
        hashes.add(value)
    return hashes | {subject_hash(i, salt=salt, key=key) for i in identifiers}


def _records_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") == TOKEN_SHARDS_FORMAT:
        raise ErasureError(
            f"{folder} holds token shards, which cannot be edited per record on their own: "
            "erase the pipeline output that holds them (its tokens/ are cut with its records)"
        )
    if manifest.get("format") != RECORDS_FORMAT:
        raise ErasureError(f"{path} has format {manifest.get('format')!r}, not {RECORDS_FORMAT!r}")
    return manifest


def find_subject(
    folder: str | os.PathLike,
    *,
    subject_hashes: Sequence[str] = (),
    identifiers: Sequence[str] = (),
    subject_field: str = "",
    key: bytes | None = None,
    salt: str = "",
    scan_budget_bytes: int = DEFAULT_SCAN_BUDGET,
) -> FindReport:
    """Where the subject's records are in ``folder`` (see the module docstring).

    ``subject_hashes`` are index hashes (keyed with ``key`` when the platform indexes so);
    ``identifiers`` are raw ids (an e-mail, a customer id): hashed for the index and field
    methods, searched for as text by the scan. Raises ``ErasureError`` when nothing was
    given that the folder's method can use."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ErasureError(f"{folder}: no such folder")
    identifiers = [i for i in identifiers if i.strip()]
    hashes = _hashes(subject_hashes, identifiers, salt, key)
    if not hashes:
        raise ErasureError("no subject: give at least one identifier or subject hash")
    manifest = _records_manifest(folder)
    if manifest is not None:
        if manifest.get("subject_index"):
            if identifiers:
                _check_key(folder, manifest, key)
            return _find_in_index(folder, manifest, hashes, scan_budget_bytes)
        files = [(folder / s["name"], True) for s in manifest["shards"]]
        report = FindReport(str(folder), "records", "row", [], scan_budget_bytes)
        _scan_files(report, folder, files, identifiers, scan_budget_bytes, zero_based=True)
        return report
    report = FindReport(str(folder), "raw", "line", [], scan_budget_bytes)
    budget = scan_budget_bytes
    to_scan: list[tuple[Path, bool]] = []
    indexed = _find_in_raw_index(folder, subject_field, hashes, identifiers, key)
    report.files += indexed
    done = {f.name for f in indexed}
    for path in _raw_files(folder):
        if _relative(path, folder) in done:
            continue
        kind = _raw_kind(path)
        if kind is None:
            report.not_searched.append(f"{_relative(path, folder)} (format not supported)")
        elif kind == "jsonl" and subject_field:
            report.files.append(_find_by_field(path, folder, subject_field, hashes, salt, key))
        else:
            to_scan.append((path, kind == "jsonl"))
    _scan_files(report, folder, to_scan, identifiers, budget, zero_based=False)
    report.files.sort(key=lambda f: f.name)
    report.complete = not report.not_searched and all(f.searched for f in report.files)
    return report


def _find_in_raw_index(folder, subject_field, hashes, identifiers, key) -> list[FileFindings]:
    """The files a raw upload's subject index covers, found through it (no record read);
    [] when the folder has no index (an upload from before raw indexes: the field pass)."""
    manifest = load_raw_index(folder)
    if manifest is None or not subject_field or manifest.get("subject_field") != subject_field:
        return []
    if identifiers:
        _check_key(folder, manifest, key)
    found = find_in_raw_index(folder, manifest, hashes)
    return [FileFindings(name, "index", lines) for name, lines in found.items()]


def _check_key(folder: Path, manifest: dict, key: bytes | None) -> None:
    """Raw ids hashed with the wrong key (or none) find nobody, which an erasure would take
    for "nothing to erase": refuse instead. (Hashes given as such cannot be checked.)"""
    try:
        check_key(folder, manifest, key)
    except SubjectKeyError as error:
        raise ErasureError(str(error)) from None


def _find_in_index(folder: Path, manifest: dict, hashes: set[str], budget: int) -> FindReport:
    entries = np.load(folder / manifest["subject_index"], mmap_mode="r")
    keys = entries["subject"]
    names = [s["name"] for s in manifest["shards"]]
    rows: dict[int, list[int]] = {}
    for value in sorted(hashes):
        wanted = bytes.fromhex(value)
        low = int(np.searchsorted(keys, wanted, side="left"))
        high = int(np.searchsorted(keys, wanted, side="right"))
        for entry in entries[low:high]:
            rows.setdefault(int(entry["shard"]), []).append(int(entry["row"]))
    files = [
        FileFindings(name, "index", sorted(rows.get(position, [])))
        for position, name in enumerate(names)
    ]
    return FindReport(str(folder), "records", "row", files, budget)


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _raw_files(folder: Path) -> list[Path]:
    """The data files of a folder: its raw subject index (when it has one) is not data."""
    index = set(RAW_INDEX_FILES) if load_raw_index(folder) is not None else set()
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")  # as engine.data.readers lists them
        and _relative(p, folder) not in index
    )


def _raw_kind(path: Path) -> str | None:
    name = path.name.lower()
    for compression in ("", *_COMPRESSIONS):
        if name.endswith(tuple(s + compression for s in _JSONL_SUFFIXES)):
            return "jsonl"
        if name.endswith(tuple(s + compression for s in _TEXT_SUFFIXES)):
            return "text"
    return None


def _find_by_field(path, folder, subject_field, hashes, salt, key) -> FileFindings:
    findings = FileFindings(_relative(path, folder), "field")
    needle = field_needle(subject_field)
    seen: dict[str, bool] = {}  # a subject has many records: hash each id once
    with open_binary(path) as stream:
        for number, line in enumerate(stream, start=1):
            findings.bytes_scanned += len(line)
            findings.lines_read += 1
            if not may_name_someone(line, needle):
                continue
            value = field_value(line, subject_field)
            if value is None:
                continue
            hit = seen.get(value)
            if hit is None:
                hit = seen[value] = subject_hash(value, salt=salt, key=key) in hashes
            if hit:
                findings.positions.append(number)
    return findings


def _scan_files(report, folder, files, identifiers, budget, *, zero_based: bool) -> None:
    """The bounded full-text scan; files past the budget are listed, not skipped silently."""
    if files and not identifiers:
        for path, _ in files:
            report.not_searched.append(
                f"{_relative(path, folder)} (not indexed: give raw identifiers to scan for)"
            )
        report.complete = False
        return
    matcher = SubjectMatcher(identifiers) if files else None
    left = budget
    for path, is_jsonl in files:
        findings = FileFindings(_relative(path, folder), "scan")
        report.files.append(findings)
        if left <= 0:
            findings.searched = False
            continue
        with open_binary(path) as stream:
            scan = scan_stream(
                stream,
                matcher,
                is_jsonl=is_jsonl,
                byte_budget=left,
                first_line=0 if zero_based else 1,
            )
        findings.positions = scan.positions
        findings.lines_read, findings.bytes_scanned = scan.lines, scan.bytes
        findings.searched = scan.complete
        left -= scan.bytes
    if not all(f.searched for f in report.files):
        report.complete = False


# ---- rewrite ---------------------------------------------------------------------------------
@dataclass
class FileResult:
    """One file of the result: ``rewritten`` without the subject's records, or ``unchanged``
    (the same bytes: the caller may reuse the stored object)."""

    name: str
    status: Literal["rewritten", "unchanged"]
    records_removed: int
    bytes: int
    sha256: str
    records: int | None = None  # record shards: rows left


@dataclass
class EraseReport:
    source: str
    output: str
    find: FindReport
    files: list[FileResult]
    records_removed: int
    rebuild: list[str] = field(default_factory=list)  # derived data the caller must rebuild
    # {"method": "cut" | "rebuild", "affected": [...], "unchanged": [...], ...}: see _erase_tokens
    token_shards: dict = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # files of the source not in the result

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["find"] = self.find.to_dict()
        return payload


def erase_subject(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    subject_hashes: Sequence[str] = (),
    identifiers: Sequence[str] = (),
    subject_field: str = "",
    key: bytes | None = None,
    salt: str = "",
    scan_budget_bytes: int = DEFAULT_SCAN_BUDGET,
) -> EraseReport:
    """Write ``output`` (a new folder) as ``folder`` without the subject's records.

    Raises ``ErasureError`` when the find was incomplete (scan budget, unsupported
    formats) and ``FileExistsError`` when ``output`` exists."""
    folder, output = Path(folder), Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; erase into a new folder")
    if output.resolve().is_relative_to(folder.resolve()):
        raise ErasureError(f"{output} lies inside {folder}; write the result beside it")
    report = find_subject(
        folder,
        subject_hashes=subject_hashes,
        identifiers=identifiers,
        subject_field=subject_field,
        key=key,
        salt=salt,
        scan_budget_bytes=scan_budget_bytes,
    )
    if not report.complete:
        left = report.not_searched + [f.name for f in report.files if not f.searched]
        raise ErasureError(
            f"the search of {folder} is incomplete ({', '.join(left[:5])}"
            f"{' ...' if len(left) > 5 else ''}): raise the scan budget or convert those files; "
            "nothing was rewritten"
        )
    staging = output.with_name(f".{output.name}.erasing")
    shutil.rmtree(staging, ignore_errors=True)  # a crashed earlier attempt
    staging.mkdir(parents=True)
    try:
        result = EraseReport(str(folder), str(output), report, [], report.hits)
        if report.kind == "records":
            _rewrite_output(folder, staging, report, result, identifiers)
        else:
            _rewrite_raw(folder, staging, report, result)
        fsync_dir(staging)
        os.rename(staging, output)  # the one step that makes the result visible
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(output.parent)
    return result


def _rewrite_raw(folder: Path, staging: Path, find: FindReport, result: EraseReport) -> None:
    """Each file without the subject's lines; a raw subject index loses their rows (later
    lines move up), so that the new version is found through its index too."""
    for findings in find.files:
        source, target = folder / findings.name, staging / findings.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if findings.hits:
            copy_without_lines(source, target, set(findings.positions), first=1)
            status = "rewritten"
        else:
            reuse_file(source, target)
            status = "unchanged"
        result.files.append(
            FileResult(
                findings.name,
                status,
                findings.hits,
                target.stat().st_size,
                sha256_of(target),
            )
        )
    manifest = load_raw_index(folder)
    if manifest is not None and any(f.method == "index" for f in find.files):
        removed = {f.name: f.positions for f in find.files if f.hits}
        sha256s = {f.name: f.sha256 for f in result.files}
        rewrite_raw_index(folder, staging, manifest, removed, sha256s)
        for name in RAW_INDEX_FILES:
            removed_rows = find.hits if name.endswith(".npy") else 0
            result.files.append(_file_result(staging, name, removed_rows))
    elif manifest is not None:
        result.dropped += list(RAW_INDEX_FILES)  # of another field: the platform indexes anew


def _rewrite_output(
    folder: Path, staging: Path, find: FindReport, result: EraseReport, identifiers: Sequence[str]
) -> None:
    manifest = _records_manifest(folder)
    removed = {f.name: f.positions for f in find.files}
    shards = []
    for shard in manifest["shards"]:
        name, rows = shard["name"], removed.get(shard["name"], [])
        source, target = folder / name, staging / name
        if rows:
            count = copy_without_lines(source, target, set(rows), first=0)
            shard = {
                **shard,
                "records": count,
                "bytes": target.stat().st_size,
                "sha256": sha256_of(target),
            }
            status = "rewritten"
        else:
            reuse_file(source, target)
            status = "unchanged"
        shards.append(shard)
        result.files.append(
            FileResult(name, status, len(rows), shard["bytes"], shard["sha256"], shard["records"])
        )
    known = {s["name"] for s in manifest["shards"]} | {MANIFEST}
    if manifest.get("subject_index"):
        index_name = manifest["subject_index"]
        known.add(index_name)
        rewrite_subject_index(folder / index_name, staging / index_name, manifest, removed)
        result.files.append(_file_result(staging, index_name, find.hits))
    report_name = manifest.get("report")
    if report_name and (folder / report_name).is_file():
        known |= {report_name, "report.txt"}
        rewrite_report(folder / report_name, staging / report_name)
        result.files.append(_file_result(staging, report_name, 0))
        if (folder / "report.txt").is_file():
            result.dropped.append("report.txt")
    if (folder / TOKENS_DIR).is_dir():
        _erase_tokens(folder, staging, manifest, removed, identifiers, result)
    for path in _raw_files(folder):  # anything else travels as is, and is listed as such
        name = _relative(path, folder)
        if name in known or name.startswith(TOKENS_DIR + "/"):
            continue
        reuse_file(path, staging / name)
        result.files.append(_file_result(staging, name, 0, status="unchanged"))
    new_manifest = {**manifest, "records": sum(s["records"] for s in shards), "shards": shards}
    (staging / MANIFEST).write_text(json.dumps(new_manifest, indent=2), encoding="utf-8")
    result.files.append(_file_result(staging, MANIFEST, 0))


def _erase_tokens(
    folder: Path,
    staging: Path,
    manifest: dict,
    removed: dict,
    identifiers: Sequence[str],
    result: EraseReport,
) -> None:
    """Cut the erased documents out of ``tokens/`` (engine.data.token_cut), or, where a cut
    would not equal re-tokenizing, leave the folder out and ask for a rebuild."""
    tokens = load_manifest(folder / TOKENS_DIR)
    counts = eot_counts(tokens)
    val_fraction = float(tokens.metadata.get("val_fraction", 0.0))
    erased = erased_documents(folder, manifest, removed, val_fraction)
    ordinals = {split: [o for o, _ in found] for split, found in erased.items()}
    reason = cut_refusal(tokens, manifest["records"], counts)
    rebuild = ["tokens"]
    tokenizer_check = "not checked: no raw identifiers given (hashes only)"
    if not reason and tokens.tokenizer_path is None:
        tokenizer_check = "no tokenizer file in the token shards"
    elif not reason and identifiers:
        held = tokenizer_subject_tokens(tokens.tokenizer_path, identifiers)
        if held:
            reason = (
                f"the tokenizer's vocabulary holds {held} token(s) of the subject's "
                "identifiers: it must be trained again without them"
            )
            rebuild = ["tokens", "tokenizer"]
        else:
            tokenizer_check = "kept: no vocabulary token matches the subject's identifiers"
    if not reason:
        try:
            cut = cut_documents(
                folder / TOKENS_DIR,
                staging / TOKENS_DIR,
                ordinals,
                counts,
                texts={split: [t for _, t in found] for split, found in erased.items()},
            )
        except CutNotExact as error:
            shutil.rmtree(staging / TOKENS_DIR, ignore_errors=True)
            reason = str(error)
    if reason:
        result.rebuild += rebuild
        result.token_shards = {
            "method": "rebuild",
            "reason": reason,
            **token_shard_impact(tokens, ordinals, counts),
        }
        result.dropped += [_relative(p, folder) for p in _raw_files(folder / TOKENS_DIR)]
        return
    result.token_shards = {
        "method": "cut",
        "affected": cut.affected,
        "unchanged": cut.unchanged,
        "documents_removed": cut.documents_removed,
        "tokens_removed": cut.tokens_removed,
        "tokenizer": tokenizer_check,
    }
    result.files += _token_files(staging, cut)


def _token_files(staging: Path, cut: TokenCut) -> list[FileResult]:
    """The new tokens/ folder's files: shards (reused ones ``unchanged``), the kept
    tokenizer and the new manifest."""
    files = [
        FileResult(
            f"{TOKENS_DIR}/{shard.path}",
            "unchanged" if shard.path in cut.unchanged else "rewritten",
            0,
            shard.num_tokens * np.dtype(shard.dtype).itemsize,
            shard.sha256,
        )
        for shard in cut.manifest.shards
    ]
    if cut.manifest.tokenizer:
        name = f"{TOKENS_DIR}/{cut.manifest.tokenizer}"
        files.append(_file_result(staging, name, 0, status="unchanged"))
    files.append(_file_result(staging, f"{TOKENS_DIR}/{MANIFEST_NAME}", 0))
    return files


def _file_result(staging: Path, name: str, removed: int, status="rewritten") -> FileResult:
    path = staging / name
    return FileResult(name, status, removed, path.stat().st_size, sha256_of(path))
