"""The residue scan finds a subject's identifiers in every stored version, in plain,
gzip (multi-member) and zstd objects, across chunk boundaries, in their normalised forms."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

from workers.storage import residue
from workers.storage.residue import scan_objects

EMAIL = "Ann.Lee+news@Example.com"


def lines(*texts: str) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode("utf-8")


def members(*texts: str) -> bytes:
    """One gzip member per JSON line, as the inference archive writes its objects."""
    return b"".join(gzip.compress(lines(t), mtime=0) for t in texts)


def found(report) -> list[tuple[str, int, int, str]]:
    return [(h.key, h.line, h.needle, h.form) for h in report.hits]


@pytest.mark.parametrize(
    "text",
    [
        "write to annlee@example.com today",
        "write to ANN.LEE@EXAMPLE.COM today",
        "write to a.n.n.l.e.e+shop@example.com today",
        "mailto:ann.lee@example.com.",
    ],
)
def test_an_email_matches_in_its_normalised_forms(local_store, text):
    local_store.put_bytes("projects/1/raw/a.jsonl", lines("nothing here", text))

    report = scan_objects(local_store, ["projects/1/"], [EMAIL])

    assert found(report) == [("projects/1/raw/a.jsonl", 2, 0, "email")]
    assert not report.clean
    # The identifier itself is never in the report, only a redacted context.
    assert "annlee" not in json.dumps(report.to_dict()).lower().replace(".", "")
    assert "[needle 0]" in report.hits[0].context


@pytest.mark.parametrize(
    "text",
    ["xannlee@example.com", "annlee@example.community", "ann@example.com", "annle@example.com"],
)
def test_other_addresses_do_not_match(local_store, text):
    local_store.put_bytes("projects/1/raw/a.jsonl", lines(text))

    report = scan_objects(local_store, ["projects/1/"], [EMAIL])

    assert report.clean and report.hits == []


def test_names_match_case_and_whitespace_insensitively_but_not_inside_words(local_store):
    local_store.put_bytes(
        "projects/1/raw/a.jsonl",
        lines("ANN   lee called", "line two ann\nLee", "C-1042 ok", "C-10420 no", "josé", "JOSÉ"),
    )

    report = scan_objects(local_store, ["projects/1/"], ["Ann Lee", "c-1042", "José"])

    assert [(h.line, h.needle) for h in report.hits] == [(1, 0), (2, 0), (3, 1), (5, 2), (6, 2)]


def test_gzip_members_zstd_frames_and_old_versions_are_all_read(s3_store, s3_client):
    bucket = s3_store.bucket
    s3_client.put_object(
        Bucket=bucket, Key="projects/1/inference/a.jsonl.gz", Body=members("hi", "Ann Lee", "x")
    )
    s3_client.put_object(Bucket=bucket, Key="projects/1/inference/a.jsonl.gz", Body=members("ok"))
    frames = b"".join(
        zstandard.ZstdCompressor().compress(lines(t)) for t in ("a", "b", "annlee@example.com")
    )
    s3_client.put_object(Bucket=bucket, Key="projects/1/clean/records-00000.jsonl.zst", Body=frames)
    s3_client.put_object(Bucket=bucket, Key="projects/1/raw/gone.jsonl", Body=lines("ann lee"))
    s3_client.delete_object(Bucket=bucket, Key="projects/1/raw/gone.jsonl")  # a marker only
    s3_client.put_object(Bucket=bucket, Key="projects/2/raw/other.jsonl", Body=lines("ann lee"))

    report = scan_objects(s3_store, ["projects/1/"], [EMAIL, "ann lee"])

    assert sorted((h.key, h.line, h.needle, h.encoding) for h in report.hits) == [
        ("projects/1/clean/records-00000.jsonl.zst", 3, 0, "zstd"),
        ("projects/1/inference/a.jsonl.gz", 2, 1, "gzip"),
        ("projects/1/raw/gone.jsonl", 1, 1, "plain"),
    ]
    old = next(h for h in report.hits if h.encoding == "gzip")
    assert old.version_id != "null"
    assert report.objects == 4  # two versions of a.jsonl.gz, the shard, gone.jsonl's old one


def test_a_needle_split_across_chunks_is_found_once(local_store, monkeypatch):
    monkeypatch.setattr(residue, "CHUNK_SIZE", 64)
    filler = "z" * 50
    texts = [f"{filler} {n} annlee@example.com {filler} Ann Lee" for n in range(40)]
    local_store.put_bytes("projects/1/raw/a.jsonl", lines(*texts))
    local_store.put_bytes("projects/1/raw/b.jsonl.gz", members(*texts))

    for chunk_size in (7, 64, 1 << 20):
        report = scan_objects(
            local_store, ["projects/1/"], [EMAIL, "ann lee"], chunk_size=chunk_size
        )
        hits = sorted((h.key, h.line, h.needle) for h in report.hits)
        expected = sorted(
            (key, n + 1, needle)
            for key in ("projects/1/raw/a.jsonl", "projects/1/raw/b.jsonl.gz")
            for n in range(40)
            for needle in (0, 1)
        )
        assert hits == expected, chunk_size
    data = local_store.get_bytes("projects/1/raw/a.jsonl").lower()
    [first_email] = [
        h for h in report.hits if h.key.endswith("a.jsonl") and h.line == 1 and h.needle == 0
    ]
    assert data[first_email.offset : first_email.offset + 18] == b"annlee@example.com"


def test_a_damaged_object_makes_the_report_unclean(local_store):
    local_store.put_bytes("projects/1/inference/a.jsonl.gz", members("fine")[:-5])

    report = scan_objects(local_store, ["projects/1/"], ["ann lee"])

    assert report.hits == [] and not report.clean
    assert report.errors[0]["key"] == "projects/1/inference/a.jsonl.gz"


def test_an_empty_needle_is_refused(local_store):
    with pytest.raises(ValueError, match="needle 1 is empty"):
        scan_objects(local_store, ["projects/1/"], ["ann", "  "])


def _objects_with_residue(store) -> None:
    store.put_bytes("projects/1/raw/a.jsonl", lines("x", "write to annlee@example.com", "y"))
    store.put_bytes("projects/1/inference/b.jsonl.gz", members("hi", "ANN  lee", "ok"))
    store.put_bytes(
        "projects/1/clean/records-00000.jsonl.zst",
        zstandard.ZstdCompressor().compress(lines("a", "ann.lee+x@EXAMPLE.com")),
    )
    store.put_bytes("projects/1/inference/broken.jsonl.gz", members("fine")[:-5])


def test_process_workers_report_what_threads_and_a_single_reader_report(local_store, monkeypatch):
    _objects_with_residue(local_store)

    def scan(**options):
        report = scan_objects(local_store, ["projects/1/"], [EMAIL, "ann lee"], **options)
        return report.hits, report.hit_count, report.errors, report.bytes_decoded

    expected = scan(threads=1)
    assert len(expected[0]) == 3 and len(expected[2]) == 1
    assert scan(threads=2) == expected  # processes that read the local store themselves
    assert scan(threads=2, processes=False) == expected
    # A store that is not local is read by the parent, which hands the bytes over...
    monkeypatch.setattr(residue, "LocalObjectStore", type("Remote", (), {}))
    assert scan(threads=2) == expected
    # ...and streams a version too big to hand over, scanning it itself.
    monkeypatch.setattr(residue, "PROCESS_MAX_BYTES", 10)
    assert scan(threads=2) == expected


def test_threads_are_used_where_no_process_pool_can_start(local_store, monkeypatch):
    _objects_with_residue(local_store)

    def refused(*args, **kwargs):
        raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(residue, "_process_pool", refused)

    report = scan_objects(local_store, ["projects/1/"], [EMAIL, "ann lee"], threads=2)

    assert report.hit_count == 3 and len(report.errors) == 1 and report.objects == 4
