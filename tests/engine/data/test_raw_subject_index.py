"""A raw upload's subject index: built in one pass over its lines, found through without
reading a record, rewritten with the erasure, and absent on older uploads (field pass)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from engine.data.erasure import ErasureError, erase_subject, find_subject
from engine.data.raw_subject_index import (
    RAW_INDEX_MANIFEST,
    RawIndexBuilder,
    load_raw_index,
    open_lines,
)
from engine.data.subject_index import hash_subject

KEY = bytes.fromhex("7a" * 32)
OLD_KEY = bytes.fromhex("5c" * 32)
ANN = "ann@example.com"
PEOPLE = [ANN, "Bob@Example.com", "carl@example.com"]


def _records(n: int = 12) -> bytes:
    lines = [json.dumps({"text": f"ticket {i}", "customer": PEOPLE[i % 3]}) for i in range(n)]
    lines.insert(4, "not json at all")
    lines.insert(6, json.dumps({"text": "no customer"}))
    return ("\n".join(lines) + "\n").encode()


def _upload(folder: Path, *, key: bytes = KEY, indexed: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_bytes(_records())
    with gzip.open(folder / "more.jsonl.gz", "wb") as sink:
        sink.write(_records(6))
    if indexed:
        builder = RawIndexBuilder("customer", key)
        for name in ("log.jsonl", "more.jsonl.gz"):
            with open((folder / name), "rb") as raw, open_lines(raw, name) as lines:
                builder.add_lines(name, lines)
        builder.write(folder)
    return folder


def test_the_index_finds_what_the_field_pass_finds(tmp_path):
    indexed = find_subject(
        _upload(tmp_path / "a"), identifiers=[ANN], subject_field="customer", key=KEY
    )
    streamed = find_subject(
        _upload(tmp_path / "b", indexed=False), identifiers=[ANN], subject_field="customer", key=KEY
    )
    assert {f.method for f in indexed.files} == {"index"}
    assert {f.method for f in streamed.files} == {"field"}
    assert [(f.name, f.positions) for f in indexed.files] == [
        (f.name, f.positions) for f in streamed.files
    ]
    assert indexed.hits == 4 + 2 and indexed.complete
    # The index's own files are not data: not searched, not listed as unreadable.
    assert not indexed.not_searched


def test_finding_through_the_index_reads_no_record(tmp_path):
    folder = _upload(tmp_path / "v1")
    # The records replaced by garbage: only the index can still say where Ann is.
    (folder / "log.jsonl").write_bytes(b"\x00" * 10)
    (folder / "more.jsonl.gz").unlink()
    report = find_subject(
        folder, identifiers=["  ANN@example.com"], subject_field="customer", key=KEY
    )
    assert {f.name: f.positions for f in report.files} == {
        "log.jsonl": [1, 4, 9, 12],
        "more.jsonl.gz": [1, 4],
    }
    assert all(f.lines_read == 0 for f in report.files)


def test_the_erasure_rewrites_the_index_so_the_next_one_finds_through_it(tmp_path):
    result = erase_subject(
        _upload(tmp_path / "v1"),
        tmp_path / "v2",
        identifiers=[ANN],
        subject_field="customer",
        key=KEY,
    )
    assert result.records_removed == 6
    names = {f.name: f.status for f in result.files}
    assert names["subject_index.npy"] == "rewritten" and names[RAW_INDEX_MANIFEST] == "rewritten"
    manifest = load_raw_index(tmp_path / "v2")
    assert {f["name"]: f["lines"] for f in manifest["files"]} == {
        "log.jsonl": 14 - 4,
        "more.jsonl.gz": 8 - 2,
    }
    log_sha = next(f.sha256 for f in result.files if f.name == "log.jsonl")
    assert manifest["files"][0]["sha256"] == log_sha
    # Bob's lines moved up; the index says where they are now, as the field pass does.
    for person in PEOPLE[1:]:
        via_index = find_subject(
            tmp_path / "v2", identifiers=[person], subject_field="customer", key=KEY
        )
        assert {f.method for f in via_index.files} == {"index"}
        lines = (tmp_path / "v2" / "log.jsonl").read_bytes().splitlines()
        for line in via_index.files[0].positions:
            assert json.loads(lines[line - 1])["customer"].casefold() == person.casefold()
    again = find_subject(tmp_path / "v2", identifiers=[ANN], subject_field="customer", key=KEY)
    assert again.hits == 0 and {f.method for f in again.files} == {"index"}


def test_an_upload_without_an_index_is_still_erased_by_the_field_pass(tmp_path):
    result = erase_subject(
        _upload(tmp_path / "v1", indexed=False),
        tmp_path / "v2",
        identifiers=[ANN],
        subject_field="customer",
        key=KEY,
    )
    assert result.records_removed == 6 and {f.method for f in result.find.files} == {"field"}
    assert not (tmp_path / "v2" / RAW_INDEX_MANIFEST).exists()


def test_an_index_of_an_older_key_generation_needs_that_key(tmp_path):
    folder = _upload(tmp_path / "v1", key=OLD_KEY)
    with pytest.raises(ErasureError, match="key id"):
        find_subject(folder, identifiers=[ANN], subject_field="customer", key=KEY)
    found = find_subject(folder, identifiers=[ANN], subject_field="customer", key=OLD_KEY)
    assert found.hits == 6
    # Hashes alone (no identifiers) are looked up as given.
    hashed = find_subject(
        folder, subject_hashes=[hash_subject(ANN, key=OLD_KEY)], subject_field="customer"
    )
    assert hashed.hits == 6


def test_a_users_own_subject_index_json_stays_data(tmp_path):
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "log.jsonl").write_bytes(_records())
    (folder / RAW_INDEX_MANIFEST).write_text(json.dumps({"customer": ANN}) + "\n")
    assert load_raw_index(folder) is None
    report = find_subject(folder, identifiers=[ANN], subject_field="customer", key=KEY)
    assert {f.name: f.method for f in report.files}["log.jsonl"] == "field"


def test_open_lines_reads_a_stream_as_the_file_reader_does(tmp_path):
    data = _records()
    with open_lines(io.BytesIO(gzip.compress(data)), "x.jsonl.gz") as lines:
        assert b"".join(lines) == data
    with open_lines(io.BytesIO(data), "x.jsonl") as lines:
        assert b"".join(lines) == data
