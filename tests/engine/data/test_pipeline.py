"""The whole cleaning run: real plays + planted duplicates + planted PII, accounted for to the record."""

from __future__ import annotations

import hashlib
import json

import pytest

from engine.data import records as records_module
from engine.data.config import ConfigError, load_pipeline_config
from engine.data.pipeline import PipelineError, run_pipeline
from engine.data.readers import InputError
from engine.data.subject_index import SubjectIndex
from engine.data.synthetic import pii_records, plant_near_duplicates
from tests.engine.data.conftest import write_jsonl

PLANTED = 20
EXACT = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, play_documents, hamlet_text):
    root = tmp_path_factory.mktemp("corpus")
    plays = [{"text": t, "source": "play", "n": i} for i, t in enumerate(play_documents)]
    plays += [
        {"text": p.text, "source": "near-copy", "of": p.original}
        for p in plant_near_duplicates(play_documents, PLANTED, seed=4)
    ]
    plays += [{"text": "  " + t.upper(), "source": "exact-copy"} for t in play_documents[:EXACT]]
    plays += [{"text": "Buy now!", "source": "junk"}]
    path = write_jsonl(root / "plays" / "plays.jsonl", plays)
    with open(path, "a") as f:
        f.write('{"text": "half a record\n')  # malformed: line number len(plays) + 1
    write_jsonl(
        root / "people" / "pii.jsonl",
        pii_records(24, hamlet_text[30_000:90_000], seed=2, subjects=4),
    )
    return root, len(plays)


def _config(root, **overrides) -> dict:
    return {
        "inputs": [
            {"path": str(root / "plays")},
            {"path": str(root / "people"), "subject_field": "user"},
        ],
        "stages": [
            "normalize",
            "quality",
            "repetition",
            "pii",
            "toxicity",
            "exact_dedup",
            "near_dedup",
        ],
        "output": {"shard_records": 64},
        "chunk_bytes": 65536,  # several work units per file: exercises the ordered merge
        **overrides,
    }


def _records(output) -> list[dict]:
    manifest = json.loads((output / "manifest.json").read_text())
    rows = []
    for shard in manifest["shards"]:
        data = (output / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        rows += [json.loads(line) for line in data.decode().splitlines()]
    return rows


@pytest.fixture(scope="module")
def single_run(corpus, tmp_path_factory):
    root, _ = corpus
    output = tmp_path_factory.mktemp("out1")
    report = run_pipeline(load_pipeline_config(_config(root)), output_dir=output, processes=1)
    return report, output


def test_every_record_is_accounted_for(single_run, corpus):
    report, output = single_run
    _, play_lines = corpus
    assert report.records_read == play_lines + 24
    removed = sum(sum(s.removed.values()) for s in report.stages.values())
    assert report.records_read - removed == report.records_written == len(_records(output))
    assert report.input_problems == 1
    assert report.problem_examples[0]["location"].endswith(f"plays.jsonl:{play_lines + 1}")
    summary = (output / "report.txt").read_text()
    assert "input problems: 1 records skipped" in summary and "near_dedup" in summary
    saved = json.loads((output / "report.json").read_text())
    assert saved["stages"]["quality"]["removed"]["too_few_words"] >= 1
    assert saved["stages"]["quality"]["examples"]["too_few_words"][0]["snippet"] == "Buy now!"
    assert saved["config"]["output"]["shard_records"] == 64


def test_planted_duplicates_are_removed_and_originals_kept(single_run):
    report, output = single_run
    records = _records(output)
    sources = [r.get("source") for r in records]
    assert sources.count("exact-copy") == 0
    assert report.stages["exact_dedup"].removed["duplicate"] == EXACT
    # A copy whose original an earlier stage removed (Gopher drops verse dense with repeated
    # speaker lines) has nothing left to duplicate; every other copy must go.
    kept_plays = {r["n"] for r in records if r.get("source") == "play"}
    orphans = [r for r in records if r.get("source") == "near-copy" and r["of"] not in kept_plays]
    assert sources.count("near-copy") == len(orphans) <= 3
    assert report.stages["near_dedup"].removed["near_duplicate"] <= PLANTED + 2  # precision
    assert "duplicate_of" in report.stages["near_dedup"].examples["near_duplicate"][0]


def test_pii_is_redacted_and_counted_and_the_report_holds_none(single_run):
    report, output = single_run
    people = [r for r in _records(output) if "user" in r]
    assert len(people) == 24
    assert all("@example.com" not in r["text"] and "<EMAIL>" in r["text"] for r in people)
    assert report.stages["pii"].counts["CREDIT_CARD"] == 24 and report.stages["pii"].changed == 24
    assert "@example.com" not in (output / "report.json").read_text()


def test_the_report_says_what_cleaning_left(single_run):
    report, output = single_run
    residual = json.loads((output / "report.json").read_text())["residual"]
    dedup = sum(sum(report.stages[name].removed.values()) for name in ("exact_dedup", "near_dedup"))
    assert residual["records_checked"] == report.records_written + dedup  # measured before dedup
    assert residual["pii_sampled_records"] > 0 and residual["pii_found_total"] == 0
    assert residual["toxic_share"] == 0.0
    assert (
        "after cleaning: toxic share 0.00%, PII found 0 in" in (output / "report.txt").read_text()
    )


def test_subject_index_finds_every_record_of_a_person(single_run):
    _, output = single_run
    index = SubjectIndex.load(output)
    records = {}
    manifest = json.loads((output / "manifest.json").read_text())
    for shard in manifest["shards"]:
        lines = (output / shard["name"]).read_text().splitlines()
        records.update({(shard["name"], row): json.loads(line) for row, line in enumerate(lines)})
    expected: dict[str, set] = {}
    for where, record in records.items():
        if "user" in record:
            expected.setdefault(record["user"], set()).add(where)
    assert len(expected) == 4 and len(index) == 24
    for user, places in expected.items():
        assert set(index.lookup(user)) == places
    assert index.lookup("user-999") == []


def test_two_processes_write_the_same_bytes(single_run, corpus, tmp_path):
    _, first = single_run
    root, _ = corpus
    run_pipeline(load_pipeline_config(_config(root)), output_dir=tmp_path, processes=2)
    for name in ["manifest.json", "subject_index.npy"] + [p.name for p in first.glob("records-*")]:
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name


def test_strict_mode_stops_at_the_bad_line(corpus, tmp_path):
    root, play_lines = corpus
    with pytest.raises(InputError, match=rf"plays.jsonl:{play_lines + 1}: malformed JSON"):
        run_pipeline(load_pipeline_config(_config(root, strict=True)), output_dir=tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_an_interrupted_run_leaves_nothing_that_looks_complete(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    config = load_pipeline_config(_config(root))
    real_write = records_module.RecordShardWriter.write
    calls = {"n": 0}

    def crash_midway(self, line):
        calls["n"] += 1
        if calls["n"] == 100:
            raise KeyboardInterrupt
        return real_write(self, line)

    monkeypatch.setattr(records_module.RecordShardWriter, "write", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, output_dir=tmp_path)
    assert not (tmp_path / "manifest.json").exists()
    for shard in tmp_path.glob("records-*.jsonl"):
        assert len(shard.read_text().splitlines()) == 64  # whole shards only; the rest is *.tmp
    monkeypatch.undo()
    report = run_pipeline(config, output_dir=tmp_path)  # the same folder can be reused
    assert report.records_written == len(_records(tmp_path))
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / ".work").exists()
    with pytest.raises(PipelineError, match="already holds a finished run"):
        run_pipeline(config, output_dir=tmp_path)


def test_an_empty_result_says_what_removed_everything(corpus, tmp_path):
    root, _ = corpus
    config = load_pipeline_config(
        _config(root, stages=[{"quality": {"min_words": 10**6, "max_words": 10**7}}])
    )
    with pytest.raises(PipelineError, match="no records survived .*report.txt"):
        run_pipeline(config, output_dir=tmp_path)
    assert "too_few_words" in (tmp_path / "report.txt").read_text()


def test_zstd_output_reads_back_and_corruption_is_named(corpus, tmp_path):
    from engine.data.records import read_records

    root, _ = corpus
    config = load_pipeline_config(
        _config(root, output={"compression": "zstd"}, stages=["normalize"])
    )
    report = run_pipeline(config, output_dir=tmp_path)
    (shard,) = report.shards
    records = list(read_records(tmp_path))
    assert shard["name"].endswith(".jsonl.zst") and len(records) == report.records_written
    assert records[0]["source"] == "play" and records[-1]["user"].startswith("user-")
    data = bytearray((tmp_path / shard["name"]).read_bytes())
    data[100] ^= 1
    (tmp_path / shard["name"]).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="records-00000.jsonl.zst is corrupt"):
        next(read_records(tmp_path))


def test_no_inputs_is_a_config_problem(tmp_path):
    with pytest.raises(PipelineError, match="no inputs"):
        run_pipeline(load_pipeline_config({}), output_dir=tmp_path)
    with pytest.raises(ConfigError):
        load_pipeline_config({"inputs": [{"path": "x", "colour": "red"}]})
