"""Erasing one person from raw uploads and pipeline outputs: found, cut out, nothing else touched."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path

import pytest

from engine.cli import main
from engine.data import erasure as erasure_module
from engine.data import token_cut
from engine.data.config import load_pipeline_config
from engine.data.erasure import (
    ErasureError,
    erase_subject,
    find_subject,
    rewrite_subject_index,
    subject_hash,
)
from engine.data.packing import tokenize_to_shards
from engine.data.pipeline import run_pipeline
from engine.data.records import read_records
from engine.data.shards import load_manifest
from engine.data.subject_index import SubjectIndex, subject_key_id, write_subject_index
from engine.data.subject_scan import normalise_email, normalise_text
from engine.data.tokenizers import BPETokenizer, CharTokenizer
from tests.engine.data.conftest import write_jsonl

USERS = [f"user-{i}" for i in range(5)]


def _tickets(play_documents) -> list[dict]:
    # 40 records over 5 users, then 4 of a late customer (user-9) whose documents sit in
    # the last token shards; texts are real prose, cut short, so that every one survives
    return [
        {"text": f"Ticket {i}. {text[:600]}", "user": USERS[(i * 7) % 5] if i < 40 else "user-9"}
        for i, text in enumerate(play_documents[:44])
    ]


def _run_pipeline(root: Path, output: Path, compression: str = "none") -> Path:
    config = load_pipeline_config(
        {
            "inputs": [{"path": str(root), "subject_field": "user"}],
            "stages": ["normalize"],
            "output": {"shard_records": 8, "compression": compression},
        }
    )
    run_pipeline(config, output_dir=output)
    texts = (r["text"] for r in read_records(output))
    tokenizer = CharTokenizer.train(texts)
    tokenizer.save(output.parent / f"{output.name}-tok.json")
    shards = sorted(str(p) for p in output.glob("records-*"))
    tokenize_to_shards(
        shards,
        output.parent / f"{output.name}-tok.json",
        output / "tokens",
        val_fraction=0.2,
        shard_tokens=2_000,
    )
    return output


@pytest.fixture(scope="module")
def clean(tmp_path_factory, play_documents):
    root = tmp_path_factory.mktemp("erasure")
    write_jsonl(root / "raw" / "tickets.jsonl", _tickets(play_documents))
    return root, _run_pipeline(root / "raw", root / "clean")


def _lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def _shard_lines(output: Path) -> list[tuple[str, bytes]]:
    manifest = json.loads((output / "manifest.json").read_text())
    return [(s["name"], line) for s in manifest["shards"] for line in _lines(output / s["name"])]


def test_the_index_finds_every_record_of_the_subject(clean):
    _, output = clean
    report = find_subject(output, subject_hashes=[subject_hash("user-2")])
    expected = [
        (name, row)
        for name in [
            s["name"] for s in json.loads((output / "manifest.json").read_text())["shards"]
        ]
        for row, line in enumerate(_lines(output / name))
        if json.loads(line)["user"] == "user-2"
    ]
    assert [(f.name, r) for f in report.files for r in f.positions] == expected
    assert report.hits == 8 and report.complete and report.bytes_scanned == 0
    assert "user-2" not in json.dumps(report.to_dict())


def test_erasing_from_a_pipeline_output_keeps_everything_else_byte_for_byte(clean, tmp_path):
    _, source = clean
    result = erase_subject(source, tmp_path / "erased", identifiers=["user-2"])
    output = tmp_path / "erased"
    before = _shard_lines(source)
    after = _shard_lines(output)
    assert [line for _, line in after] == [
        line for _, line in before if json.loads(line)["user"] != "user-2"
    ]
    assert result.records_removed == 8
    records = list(read_records(output))  # checks every shard's sha256 against the manifest
    assert len(records) == json.loads((output / "manifest.json").read_text())["records"] == 36
    statuses = {f.name: f.status for f in result.files if f.name.startswith("records-")}
    touched = {name for name, line in before if json.loads(line)["user"] == "user-2"}
    assert {n for n, s in statuses.items() if s == "rewritten"} == touched
    for name, status in statuses.items():
        if status == "unchanged":
            assert (output / name).read_bytes() == (source / name).read_bytes()


def test_the_new_index_points_at_the_moved_rows(clean, tmp_path):
    _, source = clean
    erase_subject(source, tmp_path / "erased", subject_hashes=[subject_hash("user-2")])
    index = SubjectIndex.load(tmp_path / "erased")
    assert index.lookup("user-2") == [] and len(index) == 36
    rows = {(name, row): json.loads(line) for name, row, line in _numbered(tmp_path / "erased")}
    for user in ("user-0", "user-1", "user-3", "user-4"):
        places = index.lookup(user)
        assert len(places) == 8 and all(rows[p]["user"] == user for p in places)


def _numbered(output: Path):
    for shard in json.loads((output / "manifest.json").read_text())["shards"]:
        for row, line in enumerate(_lines(output / shard["name"])):
            yield shard["name"], row, line


def _retokenized(root: Path, erased: Path, out: Path):
    """What the pipeline's tokenize step gives on the erased records, same tokenizer."""
    shards = sorted(str(p) for p in erased.glob("records-*"))
    return tokenize_to_shards(
        shards, root / "clean-tok.json", out, val_fraction=0.2, shard_tokens=2_000
    )[0]


@pytest.mark.parametrize("subject", ["user-9", "user-2"])  # the last documents; 8 spread out
def test_token_shards_are_cut_to_what_re_tokenizing_gives(clean, tmp_path, subject):
    root, source = clean
    result = erase_subject(source, tmp_path / "erased", identifiers=[subject])
    assert result.rebuild == [] and result.token_shards["method"] == "cut"
    assert result.token_shards["tokenizer"].startswith("kept")
    redone = _retokenized(root, tmp_path / "erased", tmp_path / "redone")
    cut = load_manifest(tmp_path / "erased" / "tokens", verify_checksums=True)
    assert {s.path: s.sha256 for s in cut.shards} == {s.path: s.sha256 for s in redone.shards}
    assert cut.splits == redone.splits and cut.metadata["documents"] == 44 - result.records_removed
    removed = result.token_shards["documents_removed"]
    assert sum(removed.values()) == result.records_removed
    # Every file of the new tokens/ folder is in the result; shards before the first cut
    # are the old files (hard links), reported unchanged so their objects are reused.
    statuses = {f.name: f.status for f in result.files if f.name.startswith("tokens/")}
    assert set(statuses) == {f"tokens/{p.name}" for p in (tmp_path / "erased" / "tokens").iterdir()}
    old = load_manifest(source / "tokens")
    for shard in old.shards:
        name = f"tokens/{shard.path}"
        if shard.path in result.token_shards["unchanged"]:
            assert statuses[name] == "unchanged"
            assert os.stat(source / name).st_ino == os.stat(tmp_path / "erased" / name).st_ino
        elif name in statuses:
            assert statuses[name] == "rewritten"
    assert result.token_shards["affected"] and statuses["tokens/tokenizer.json"] == "unchanged"
    if subject == "user-9":  # only the last shards of a split move
        assert result.token_shards["unchanged"]


def test_a_hash_only_erasure_keeps_the_tokenizer_unchecked(clean, tmp_path):
    _, source = clean
    result = erase_subject(source, tmp_path / "erased", subject_hashes=[subject_hash("user-2")])
    assert result.token_shards["method"] == "cut"
    assert result.token_shards["tokenizer"].startswith("not checked")


def test_a_tokenizer_that_learnt_the_subject_is_rebuilt_with_the_shards(clean, tmp_path):
    root, source = clean
    copy = tmp_path / "clean"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("tokens"))
    texts = [r["text"] for r in read_records(copy)] + ["Bartholomew Quince wrote"] * 40
    BPETokenizer.train(texts, vocab_size=400).save(tmp_path / "bpe.json")
    shards = sorted(str(p) for p in copy.glob("records-*"))
    tokenize_to_shards(shards, tmp_path / "bpe.json", copy / "tokens", val_fraction=0.2)
    result = erase_subject(copy, tmp_path / "erased", identifiers=["user-2", "Bartholomew Quince"])
    assert result.rebuild == ["tokens", "tokenizer"]
    assert result.token_shards["method"] == "rebuild"
    assert "tokenizer's vocabulary" in result.token_shards["reason"]
    assert not (tmp_path / "erased" / "tokens").exists()
    assert "tokens/manifest.json" in result.dropped


def test_an_end_of_text_inside_a_text_falls_back_to_a_rebuild(tmp_path, play_documents):
    tickets = _tickets(play_documents)
    tickets[3]["text"] += " <|endoftext|> pasted from a chat log"
    write_jsonl(tmp_path / "raw" / "t.jsonl", tickets)
    source = _run_pipeline(tmp_path / "raw", tmp_path / "clean")
    result = erase_subject(source, tmp_path / "erased", identifiers=["user-2"])
    assert result.rebuild == ["tokens"] and result.token_shards["method"] == "rebuild"
    assert "end-of-text tokens" in result.token_shards["reason"]
    assert result.token_shards["affected"]  # where the subject was, for the record
    assert not (tmp_path / "erased" / "tokens").exists()


def test_the_report_keeps_its_counts_but_loses_its_quotes(clean, tmp_path):
    _, source = clean
    erase_subject(source, tmp_path / "erased", identifiers=["user-2"])
    report = json.loads((tmp_path / "erased" / "report.json").read_text())
    assert report["examples_removed_by_erasure"] is True
    assert "snippet" not in json.dumps(report)
    assert (
        report["records_read"] == json.loads((source / "report.json").read_text())["records_read"]
    )


def test_erasure_is_repeatable_to_the_byte(clean, tmp_path):
    _, source = clean
    erase_subject(source, tmp_path / "a", identifiers=["user-2", "user-4"])
    erase_subject(source, tmp_path / "b", identifiers=["user-2", "user-4"])
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert names == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert Path("tokens/manifest.json") in names
    for name in [n for n in names if (tmp_path / "a" / n).is_file()]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_zstd_shards_stay_zstd(tmp_path, play_documents):
    write_jsonl(tmp_path / "raw" / "t.jsonl", _tickets(play_documents))
    source = _run_pipeline(tmp_path / "raw", tmp_path / "clean", compression="zstd")
    erase_subject(source, tmp_path / "erased", identifiers=["user-0"])
    records = list(read_records(tmp_path / "erased"))
    assert len(records) == 36 and all(r["user"] != "user-0" for r in records)
    assert all(p.name.endswith(".jsonl.zst") for p in (tmp_path / "erased").glob("records-*"))


def test_a_crash_leaves_no_half_written_folder(clean, tmp_path, monkeypatch):
    _, source = clean

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(erasure_module, "rewrite_subject_index", crash)
    with pytest.raises(OSError, match="disk full"):
        erase_subject(source, tmp_path / "erased", identifiers=["user-2"])
    assert list(tmp_path.iterdir()) == []
    # ... nor does one in the middle of cutting the token shards (shards written, no manifest)
    monkeypatch.setattr(erasure_module, "rewrite_subject_index", rewrite_subject_index)
    monkeypatch.setattr(token_cut, "_write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        erase_subject(source, tmp_path / "erased", identifiers=["user-2"])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    erase_subject(source, tmp_path / "erased", identifiers=["user-2"])  # the re-run finishes
    assert len(list(read_records(tmp_path / "erased"))) == 36


# ---- raw uploads ----------------------------------------------------------------------------
@pytest.fixture()
def raw_gz(tmp_path, play_documents):
    lines = [json.dumps(r) + "\n" for r in _tickets(play_documents)[:12]]
    lines.insert(3, "\n")  # a blank line and a malformed one: kept as they are
    lines.insert(6, '{"text": "half a rec\n')
    path = tmp_path / "raw" / "part-1.jsonl.gz"
    path.parent.mkdir()
    with gzip.open(path, "wb") as f:
        f.write("".join(lines).encode())
    write_jsonl(tmp_path / "raw" / "part-2.jsonl", [{"text": "hello", "user": "user-3"}])
    return tmp_path / "raw", [line.encode() for line in lines]


def test_raw_jsonl_is_searched_by_its_subject_field(raw_gz):
    folder, lines = raw_gz
    report = find_subject(folder, subject_hashes=[subject_hash("user-2")], subject_field="user")
    expected = [
        number
        for number, line in enumerate(lines, start=1)
        if line.strip() and line.startswith(b'{"text": "Ticket') and b'"user-2"' in line
    ]
    assert [(f.name, f.method) for f in report.files] == [
        ("part-1.jsonl.gz", "field"),
        ("part-2.jsonl", "field"),
    ]
    assert report.files[0].positions == expected and report.files[1].positions == []
    assert report.unit == "line" and report.complete


def test_raw_gzip_is_rewritten_as_gzip_without_the_subject(raw_gz, tmp_path):
    folder, lines = raw_gz
    result = erase_subject(folder, tmp_path / "a", identifiers=["user-2"], subject_field="user")
    assert _lines(tmp_path / "a" / "part-1.jsonl.gz") == [
        line for line in lines if b'"user": "user-2"' not in line
    ]
    assert [(f.name, f.status) for f in result.files] == [
        ("part-1.jsonl.gz", "rewritten"),
        ("part-2.jsonl", "unchanged"),
    ]
    rewritten = tmp_path / "a" / "part-1.jsonl.gz"
    assert result.files[0].sha256 == hashlib.sha256(rewritten.read_bytes()).hexdigest()
    erase_subject(folder, tmp_path / "b", identifiers=["user-2"], subject_field="user")
    assert rewritten.read_bytes() == (tmp_path / "b" / "part-1.jsonl.gz").read_bytes()


def test_a_keyed_hash_finds_the_subject_however_the_id_was_typed(tmp_path):
    key = b"project-secret"
    write_jsonl(
        tmp_path / "raw" / "a.jsonl",
        [{"text": "x", "email": " Ann@Example.org"}, {"text": "y", "email": "bob@example.org"}],
    )
    keyed = hmac.new(key, b"ann@example.org", hashlib.sha256).hexdigest()
    assert subject_hash("ANN@example.org ", key=key) == keyed
    report = find_subject(tmp_path / "raw", subject_hashes=[keyed], subject_field="email", key=key)
    assert report.files[0].positions == [1]


def test_a_keyed_index_needs_its_own_key(clean, tmp_path):
    _, source = clean
    key = bytes(range(32))
    keyed = tmp_path / "keyed"
    keyed.mkdir()
    manifest = json.loads((source / "manifest.json").read_text())
    subjects, shards, rows = [], [], []
    for position, shard in enumerate(manifest["shards"]):
        (keyed / shard["name"]).write_bytes((source / shard["name"]).read_bytes())
        for row, line in enumerate(_lines(source / shard["name"])):
            subjects.append(bytes.fromhex(subject_hash(json.loads(line)["user"], key=key)))
            shards.append(position)
            rows.append(row)
    write_subject_index(keyed / "subject_index.npy", subjects, shards, rows)
    manifest.update(subject_keyed=True, subject_key_id=subject_key_id(key))
    (keyed / "manifest.json").write_text(json.dumps(manifest))
    assert find_subject(keyed, identifiers=[" USER-2"], key=key).hits == 8
    assert find_subject(keyed, subject_hashes=[subject_hash("user-2", key=key)]).hits == 8
    with pytest.raises(
        ErasureError, match="is keyed .key id [0-9a-f]{8}.: give the key it was built with"
    ):
        find_subject(keyed, identifiers=["user-2"])
    with pytest.raises(ErasureError, match="wrong subject key"):
        find_subject(keyed, identifiers=["user-2"], key=b"x" * 32)
    with pytest.raises(ErasureError, match="built without a key"):
        find_subject(source, identifiers=["user-2"], key=key)
    result = erase_subject(keyed, tmp_path / "erased", identifiers=["user-2"], key=key)
    erased = json.loads((tmp_path / "erased" / "manifest.json").read_text())
    assert result.records_removed == 8 and erased["subject_key_id"] == subject_key_id(key)


# ---- not indexed: the bounded full-text scan --------------------------------------------------
@pytest.fixture()
def unindexed(tmp_path):
    folder = tmp_path / "raw"
    write_jsonl(
        folder / "tickets.jsonl",
        [
            {"text": "Customer wrote from ANN.LEE+shop@Example.org about a refund"},
            {"text": "Order for customer CUST-420 shipped"},
            {"text": "Refund for cust-42 approved", "agent": "bob"},
            {"text": "nothing to see", "meta": {"contact": "annlee@example.org"}},
            {"text": "Ann   \n Lee called back"},
            {"text": "Anne Leeds called"},
        ],
    )
    (folder / "notes.txt").write_text("first line\nspoke with Ann Lee today\nlast line\n")
    return folder


def test_normalised_forms():
    assert normalise_text("  Ann\n\t LEE ") == "ann lee"
    assert normalise_email("Ann.Lee+shop@Example.ORG") == "annlee@example.org"


def test_the_scan_finds_the_identifiers_in_their_normalised_forms(unindexed):
    report = find_subject(
        unindexed,
        identifiers=["ann.lee@example.org", "CUST-42", "Ann Lee"],
        scan_budget_bytes=10_000,
    )
    found = {f.name: f.positions for f in report.files}
    assert found == {"notes.txt": [2], "tickets.jsonl": [1, 3, 4, 5]}
    assert report.complete and {f.method for f in report.files} == {"scan"}
    dumped = json.dumps(report.to_dict()).lower()
    assert not any(word in dumped for word in ("lee", "example.org", "cust", "refund"))


def test_the_scan_counts_lines_right_across_blocks_of_a_large_file(tmp_path):
    lines = [f'{{"text": "ticket {i} about order ORD-{i:07d}"}}\n' for i in range(60_000)]
    lines[45_001] = '{"text": "Reply to J.Doe+x@Example.org please"}\n'
    lines[59_999] = '{"text": "caf\\u00e9 J.DOE@example.org"}\n'  # escaped: decoded, still found
    with gzip.open(tmp_path / "big.jsonl.gz", "wt") as f:
        f.write("".join(lines))
    report = find_subject(tmp_path, identifiers=["jdoe@example.org"])
    assert report.files[0].positions == [45_002, 60_000]
    assert report.files[0].lines_read == 60_000 and report.bytes_scanned > 2**21


def test_an_exhausted_budget_is_reported_and_blocks_the_rewrite(unindexed, tmp_path):
    report = find_subject(unindexed, identifiers=["CUST-42"], scan_budget_bytes=150)
    assert not report.complete and report.bytes_scanned <= 150
    assert [f.name for f in report.files if not f.searched] == ["tickets.jsonl"]
    with pytest.raises(ErasureError, match="incomplete.*raise the scan budget"):
        erase_subject(unindexed, tmp_path / "out", identifiers=["CUST-42"], scan_budget_bytes=150)
    assert not (tmp_path / "out").exists()


def test_the_scan_rewrite_drops_the_matching_lines(unindexed, tmp_path):
    erase_subject(unindexed, tmp_path / "out", identifiers=["cust-42", "Ann Lee"])
    assert (tmp_path / "out" / "notes.txt").read_text() == "first line\nlast line\n"
    kept = [json.loads(line)["text"] for line in _lines(tmp_path / "out" / "tickets.jsonl")]
    assert kept == [
        "Customer wrote from ANN.LEE+shop@Example.org about a refund",
        "Order for customer CUST-420 shipped",
        "nothing to see",
        "Anne Leeds called",
    ]


def test_a_pipeline_output_without_an_index_is_scanned_by_row(clean, tmp_path):
    _, source = clean
    unindexed = tmp_path / "unindexed"
    unindexed.mkdir()
    manifest = json.loads((source / "manifest.json").read_text())
    for shard in manifest["shards"]:
        (unindexed / shard["name"]).write_bytes((source / shard["name"]).read_bytes())
    manifest["subject_index"] = None
    (unindexed / "manifest.json").write_text(json.dumps(manifest))
    report = find_subject(unindexed, identifiers=["user-9"])
    assert report.unit == "row" and {f.method for f in report.files} == {"scan"}
    indexed = find_subject(source, identifiers=["user-9"])
    assert [(f.name, f.positions) for f in report.files] == [
        (f.name, f.positions) for f in indexed.files
    ]
    erase_subject(unindexed, tmp_path / "erased", identifiers=["user-9"])
    assert [r["user"] for r in read_records(tmp_path / "erased")].count("user-9") == 0


def test_an_unindexed_folder_needs_raw_identifiers(unindexed):
    report = find_subject(unindexed, subject_hashes=["ab" * 32])
    assert not report.complete and "not indexed" in report.not_searched[0]


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_reason(clean, tmp_path):
    _, source = clean
    with pytest.raises(ErasureError, match="no subject"):
        find_subject(source)
    with pytest.raises(ErasureError, match="64 hex digits"):
        find_subject(source, subject_hashes=["not-a-hash"])
    with pytest.raises(ErasureError, match="token shards, which cannot be edited"):
        find_subject(source / "tokens", identifiers=["user-2"])
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="erase into a new folder"):
        erase_subject(source, tmp_path / "taken", identifiers=["user-2"])


def test_the_cli_erases_and_prints_what_it_did(clean, tmp_path, capsys):
    _, source = clean
    out = tmp_path / "erased"
    assert main(["data", "erase", str(source), "--out", str(out), "--id", "user-2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["records_removed"] == 8 and payload["rebuild"] == []
    assert payload["token_shards"]["method"] == "cut"
    assert (
        main(["data", "erase", str(source), "--find-only", "--hash", subject_hash("user-1")]) == 0
    )
    assert "8 records of the subject in" in capsys.readouterr().out
    assert main(["data", "erase", str(source), "--out", str(tmp_path / "b"), "--id", "user-2"]) == 0
    assert "token shards cut: 8 documents" in capsys.readouterr().out
