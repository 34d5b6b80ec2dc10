"""``python -m engine generate`` on a checkpoint folder: text out, or one error line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from engine.cli import main
from engine.data.tokenizers import CharTokenizer
from engine.models.gpt import GPT, GPTConfig
from engine.train.export import export_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tokenizer = CharTokenizer.train("abcdefgh ")
    folder = tmp_path_factory.mktemp("export")
    tokenizer.save(folder / "tok.json")
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    )
    export_model(
        model, folder / "model", tokenizer_file=folder / "tok.json", eot_id=tokenizer.eot_id
    )
    return folder / "model"


def test_prints_completions_as_json(exported, capsys):
    code = main(
        [
            "generate",
            "--checkpoint",
            str(exported),
            "--prompt",
            "abc",
            "--prompt",
            "h",
            "--max-new-tokens",
            "5",
            "--seed",
            "1",
            "--json",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert [g["prompt"] for g in payload["generations"]] == ["abc", "h"]
    assert all(g["completion_tokens"] <= 5 for g in payload["generations"])


def test_streams_one_prompt(exported, capsys):
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(exported),
                "--prompt",
                "ab",
                "--stream",
                "--max-new-tokens",
                "4",
                "--greedy",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("ab")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-p", "1.5"], "error: top_p must be in (0, 1]"),
        (["--temperature", "-1"], "error: temperature must be in"),
        (["--repetition-penalty", "0"], "error: repetition_penalty must be in (0, 10]"),
    ],
)
def test_bad_sampling_parameters_exit_2_with_the_name(exported, capsys, extra, message):
    assert main(["generate", "--checkpoint", str(exported), "--prompt", "ab", *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_tokenizer_that_does_not_fit_the_model_exits_2(exported, tmp_path, capsys):
    CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ").save(tmp_path / "big.json")
    code = main(
        [
            "generate",
            "--checkpoint",
            str(exported),
            "--tokenizer",
            str(tmp_path / "big.json"),
            "--prompt",
            "ab",
        ]
    )
    assert code == 2
    assert "does not belong to this model" in capsys.readouterr().err


def test_a_folder_without_a_checkpoint_exits_2(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "ab"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
