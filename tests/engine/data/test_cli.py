"""``python -m engine data ...``: the commands an ML engineer types, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.cli import main
from engine.data.shards import load_manifest
from tests.engine.data.conftest import write_jsonl


@pytest.fixture()
def raw(tmp_path, play_documents):
    write_jsonl(
        tmp_path / "raw" / "plays.jsonl",
        [{"text": t, "user": f"u{i % 3}"} for i, t in enumerate(play_documents[:40])],
    )
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"inputs:\n  - {{path: {tmp_path / 'raw'}, subject_field: user}}\n"
        "stages: [normalize, quality, pii, exact_dedup, near_dedup]\n"
        f"output: {{path: {tmp_path / 'clean'}}}\n"
    )
    return tmp_path, config


def test_run_then_train_tokenizer_then_tokenize(raw, capsys):
    root, config = raw
    assert main(["data", "run", str(config)]) == 0
    out = capsys.readouterr().out
    assert "read 40 records" in out and f"output: {root / 'clean'}" in out
    assert (
        main(
            [
                "data",
                "train-tokenizer",
                str(root / "clean"),
                "--vocab-size",
                "500",
                "--out",
                str(root / "tok.json"),
            ]
        )
        == 0
    )
    assert "vocab_size 500, end-of-text id 0" in capsys.readouterr().out
    args = [
        "data",
        "tokenize",
        str(root / "clean"),
        "--tokenizer",
        str(root / "tok.json"),
        "--out",
        str(root / "tokens"),
    ]
    assert main(args + ["--val-fraction", "0.1"]) == 0
    assert "tokenized" in capsys.readouterr().out
    manifest = load_manifest(root / "tokens", verify_checksums=True)
    assert manifest.num_tokens("train") > 10_000 and manifest.tokenizer == "tokenizer.json"
    assert main(["data", "find-subject", str(root / "clean"), "u1"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) >= 10 and {"shard", "row"} == set(hits[0])


def test_user_errors_print_one_line_and_exit_2(raw, capsys):
    root, config = raw
    config.write_text(config.read_text().replace("quality", "{quality: {min_wrds: 3}}"))
    assert main(["data", "run", str(config)]) == 2
    assert capsys.readouterr().err == (
        "error: unknown key 'stages[1].quality.min_wrds' "
        "(did you mean 'stages[1].quality.min_words'?)\n"
    )
    assert (
        main(
            [
                "data",
                "tokenize",
                str(root / "raw"),
                "--tokenizer",
                str(root / "none.json"),
                "--out",
                str(root / "t"),
            ]
        )
        == 2
    )
    assert "no tokenizer file" in capsys.readouterr().err
    assert main(["data", "run", str(config), "--input", str(root / "missing")]) == 2


def test_images_with_the_digits(tmp_path, capsys):
    assert main(["data", "images", "--digits", "--out", str(tmp_path / "digits")]) == 0
    assert "wrote 1797 images of shape (8, 8)" in capsys.readouterr().out


def test_module_entry_point_runs_in_a_fresh_process(tmp_path):
    """The real command line: exit status 2 and no traceback for a bad input."""
    result = subprocess.run(
        [sys.executable, "-m", "engine", "data", "run", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert (
        result.returncode == 2
        and result.stderr.startswith("error: pipeline config")
        and "Traceback" not in result.stderr
    )
