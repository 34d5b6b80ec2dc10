"""`python -m engine evaluate`, called in this process."""

from __future__ import annotations

import json

from engine.cli import main


def test_evaluate_text_from_the_command_line(tiny_text, capsys):
    status = main(
        [
            "evaluate",
            "text",
            str(tiny_text.model_dir),
            "--data",
            str(tiny_text.shards),
            "--train",
            str(tiny_text.shards),
            "--set",
            "samples=2",
            "--set",
            "sample_tokens=55",
            "--set",
            "device=cpu",
            "--json",
        ]
    )
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["samples"] == 2.0
    assert "memorisation_share" in result["metrics"]
    assert result["details"]["settings"]["sample_tokens"] == 55


def test_a_bad_setting_is_one_line_and_status_2(tiny_text, capsys):
    args = ["evaluate", "text", str(tiny_text.model_dir), "--data", str(tiny_text.shards)]
    assert main([*args, "--set", "samples=0"]) == 2
    assert "samples must be at least 1" in capsys.readouterr().err
    assert main([*args, "--set", "samples"]) == 2
    assert "key=value" in capsys.readouterr().err
