"""What cleaning left: toxic share and PII found after the stages, in report.json and report.txt."""

from __future__ import annotations

import json

import pytest

from engine.data.config import load_pipeline_config
from engine.data.documents import Document
from engine.data.pii import PIIConfig, PIIRedactor
from engine.data.pipeline import run_pipeline
from engine.data.report import ResidualStats
from engine.data.residual import PII_SAMPLE_EVERY, PII_SAMPLE_FIRST, ResidualMeter
from engine.data.synthetic import pii_records
from engine.data.toxicity import DEFAULT_LEXICON, load_lexicon
from tests.engine.data.conftest import write_jsonl

RANTS = 4
PEOPLE = 8


@pytest.fixture(scope="module")
def dirty(tmp_path_factory, play_documents, hamlet_text):
    """Plays (two work units), records with e-mails and phones, and rants."""
    root = tmp_path_factory.mktemp("dirty")
    write_jsonl(root / "a-plays.jsonl", [{"text": t} for t in play_documents[:30]])
    write_jsonl(root / "b-people.jsonl", pii_records(PEOPLE, hamlet_text[30_000:60_000], seed=3))
    words = sorted(load_lexicon(DEFAULT_LEXICON))
    rants = [
        " ".join(f"you {w}, you utter {w}!" for w in words[i : i + 10]) + " " + play_documents[i]
        for i in range(RANTS)
    ]
    write_jsonl(root / "c-rants.jsonl", [{"text": t} for t in rants])
    return root


def _run(root, output, stages, processes=1) -> dict:
    config = load_pipeline_config({"stages": stages, "chunk_bytes": 65536})
    report = run_pipeline(config, inputs=[str(root)], output_dir=output, processes=processes)
    saved = json.loads((output / "report.json").read_text())
    assert saved["residual"] == report.to_dict()["residual"]
    return saved


def test_without_pii_and_toxicity_stages_the_report_shows_what_is_left(dirty, tmp_path):
    report = _run(dirty, tmp_path, ["normalize"])
    residual = report["residual"]
    assert residual["records_checked"] == report["records_written"] == 30 + PEOPLE + RANTS
    assert residual["toxic_records"] >= RANTS and residual["toxicity_threshold"] == 0.02
    assert residual["toxic_share"] == pytest.approx(
        residual["toxic_records"] / residual["records_checked"], abs=1e-6
    )
    # The first records of every unit are always sampled: each person record is in a unit.
    assert residual["pii_found"]["EMAIL"] >= PII_SAMPLE_FIRST
    assert residual["pii_found"]["PHONE"] >= PII_SAMPLE_FIRST
    assert residual["pii_found_total"] == sum(residual["pii_found"].values())
    assert residual["pii_per_1k_records"] == pytest.approx(
        1000 * residual["pii_found_total"] / residual["pii_sampled_records"], abs=1e-3
    )
    summary = (tmp_path / "report.txt").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("after cleaning:"))
    assert f"toxic share {100 * residual['toxic_share']:.2f}%" in line
    assert f"PII found {residual['pii_found_total']} in {residual['pii_sampled_records']}" in line


def test_with_pii_and_toxicity_stages_nothing_is_left(dirty, tmp_path):
    report = _run(dirty, tmp_path, ["normalize", "pii", "toxicity"])
    residual = report["residual"]
    assert report["stages"]["toxicity"]["removed"]["above_threshold"] >= RANTS
    assert residual["records_checked"] == report["records_written"] > 30
    assert residual["pii_sampled_records"] >= PII_SAMPLE_FIRST
    assert residual["pii_found_total"] == 0 and residual["pii_per_1k_records"] == 0.0
    assert residual["toxic_records"] == 0 and residual["toxic_share"] == 0.0
    assert (
        "after cleaning: toxic share 0.00%, PII found 0 in" in (tmp_path / "report.txt").read_text()
    )


def test_a_looser_toxicity_stage_is_measured_by_its_own_threshold(dirty, tmp_path):
    report = _run(dirty, tmp_path, [{"toxicity": {"threshold": 0.9}}])
    residual = report["residual"]
    assert residual["toxicity_threshold"] == 0.9
    assert residual["toxic_records"] == 0 and residual["records_checked"] == 30 + PEOPLE + RANTS


def test_the_measure_is_the_same_for_one_and_two_processes(dirty, tmp_path):
    one = _run(dirty, tmp_path / "one", ["normalize"], processes=1)
    two = _run(dirty, tmp_path / "two", ["normalize"], processes=2)
    assert two["run"]["processes"] == 2 and one["residual"] == two["residual"]


def test_placeholders_the_pii_stage_wrote_are_not_pii(hamlet_text):
    (record,) = pii_records(1, hamlet_text[30_000:40_000], seed=5)
    for placeholder in ("<{type}>", "[{type}@redacted.example]"):
        stage_config = PIIConfig(placeholder=placeholder)
        redacted, found = PIIRedactor(stage_config).redact(record["text"])
        assert found["EMAIL"] == 1 and found["PHONE"] == 1
        config = load_pipeline_config({"stages": [{"pii": {"placeholder": placeholder}}]})
        stats = ResidualStats()
        ResidualMeter(config).measure(Document(redacted), 0, stats)
        assert stats.pii_sampled_records == 1 and stats.pii_found_total == 0, placeholder
    # The same text measured as if no pii stage wrote it: the odd placeholder is an address.
    stats = ResidualStats()
    ResidualMeter(load_pipeline_config({"stages": ["normalize"]})).measure(
        Document(redacted), 0, stats
    )
    assert stats.pii_found["EMAIL"] >= 1


def test_the_pii_sample_is_small_and_covers_the_first_records():
    meter = ResidualMeter(load_pipeline_config({"stages": ["normalize"]}))
    stats = ResidualStats()
    for index in range(800):
        meter.measure(Document(f"record {index}: write to someone@example.com"), index, stats)
    assert stats.records_checked == 800
    expected = PII_SAMPLE_FIRST + (800 - PII_SAMPLE_FIRST) / PII_SAMPLE_EVERY
    assert abs(stats.pii_sampled_records - expected) <= 3
    assert stats.pii_found["EMAIL"] == stats.pii_sampled_records
    tiny = ResidualStats()
    for index in range(3):
        meter.measure(Document("call +44 20 7946 0123"), index, tiny)
    assert tiny.pii_sampled_records == 3 and tiny.pii_found["PHONE"] == 3
