"""The post-training run end to end: every kind from a config, outputs that chain, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.cli import main as engine_main
from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
from engine.finetune.config import ConfigError, config_from_dict
from engine.finetune.run import CHECKPOINTS, FinetuneError, run
from engine.finetune.shakespeare import shakespeare_preference_pairs
from engine.infer.loading import load_for_generation
from engine.models.gpt import GPT, GPTConfig
from engine.train.export import export_model
from tests.engine.recording_callback import Recorder

PAIRS = 48  # built-in Shakespeare pairs per run: a few batches, seconds of CPU


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny random GPT with a character tokenizer that reserves the chat tokens."""
    folder = tmp_path_factory.mktemp("base")
    records = shakespeare_preference_pairs(PAIRS)
    text = "".join(r["prompt"] + r["chosen"] + r["rejected"] for r in records)
    tokenizer = CharTokenizer.train(text, special_tokens=DEFAULT_SPECIAL_TOKENS)
    tokenizer.save(folder / "tok.json")
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=288, n_layer=1, n_head=2, n_embd=32
    )
    return export_model(GPT(config), folder / "model", tokenizer_file=folder / "tok.json", eot_id=0)


def make_config(kind: str, run_dir: Path, base_path: Path, **sections):
    raw = {
        "run_dir": str(run_dir),
        "base": {"path": str(base_path)},
        "data": {"count": PAIRS},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "log_interval": 2,
            "eval_interval": 0,
            "eval_batches": 1,
        },
        "ppo": {"rollout_batch_size": 4, "minibatch_size": 2, "max_new_tokens": 8, "ppo_epochs": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return config_from_dict(kind, raw)


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["sft", "lora", "qlora", "dpo"])
def test_policy_kinds_write_a_model_the_next_run_can_start_from(kind, base_dir, tmp_path):
    summary = run(make_config(kind, tmp_path / kind, base_dir))
    assert summary.steps == 4
    model, tokenizer = load_for_generation(summary.outputs["model"])
    assert model.config.n_embd == 32 and tokenizer.vocab_size <= model.config.vocab_size
    lines = metric_lines(tmp_path / kind)
    assert any("eval/loss" in line or "eval/accuracy" in line for line in lines)
    assert (tmp_path / kind / "samples.json").is_file()
    # The output is a base for the next kind.
    follow = run(
        make_config("dpo", tmp_path / "next", Path(summary.outputs["model"]), train={"steps": 1})
    )
    assert follow.steps == 1


def test_lora_checkpoints_hold_only_the_adapters(base_dir, tmp_path):
    summary = run(make_config("lora", tmp_path, base_dir, lora={"r": 2}))
    state = CHECKPOINTS.load(summary.checkpoint)["state"]
    assert state and all(k.endswith((".lora_A", ".lora_B", ".rows.delta")) for k in state)
    assert "transformer.wte.rows.delta" in state  # the chat tokens' rows train too
    assert summary.trainable_parameters < 0.25 * summary.total_parameters
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file()


def test_resumed_run_matches_an_uninterrupted_one(base_dir, tmp_path):
    run(make_config("lora", tmp_path / "whole", base_dir, train={"steps": 4, "log_interval": 1}))
    run(make_config("lora", tmp_path / "cut", base_dir, train={"steps": 2, "log_interval": 1}))
    resumed = run(
        make_config("lora", tmp_path / "cut", base_dir, train={"steps": 4, "log_interval": 1}),
        resume=True,
    )
    assert resumed.steps == 4

    def losses(run_dir: Path) -> list[float]:
        return [line["train/loss"] for line in metric_lines(run_dir) if "train/loss" in line]

    assert len(losses(tmp_path / "cut")) == 4
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)


def test_should_stop_ends_at_a_checkpoint_without_outputs_and_resumes_exactly(base_dir, tmp_path):
    run(make_config("lora", tmp_path / "whole", base_dir, train={"log_interval": 1}))
    stopper = Recorder(stop_at=1)
    cut = make_config("lora", tmp_path / "cut", base_dir, train={"log_interval": 1})
    stopped = run(cut, callbacks=[stopper])
    assert stopped.stopped and stopped.steps == 1 and stopper.checkpoint_steps == [1]
    assert stopped.outputs == {} and not (tmp_path / "cut" / "model").exists()
    resumed = run(cut, resume=True)
    assert resumed.steps == 4 and not resumed.stopped and "model" in resumed.outputs

    def losses(run_dir: Path) -> list[float]:
        return [line["train/loss"] for line in metric_lines(run_dir) if "train/loss" in line]

    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_reward_then_ppo(base_dir, tmp_path):
    reward = run(make_config("reward", tmp_path / "reward", base_dir))
    assert (Path(reward.outputs["reward"]) / "reward_model.json").is_file()
    assert "eval/accuracy" in reward.evaluation
    ppo = run(
        make_config(
            "ppo",
            tmp_path / "ppo",
            base_dir,
            base={"reward_model": reward.outputs["reward"]},
            train={"steps": 2},
        )
    )
    assert {"eval/reward", "eval/kl"} <= set(ppo.evaluation)
    assert "ppo/reward" in ppo.last_metrics
    load_for_generation(ppo.outputs["model"])


def test_dpo_with_adapters_uses_the_adapter_free_base_as_reference(base_dir, tmp_path):
    summary = run(
        make_config("dpo", tmp_path, base_dir, use_lora=True, dpo={"precompute_reference": True})
    )
    # Step 0: the adapters are zero, so policy == reference and every implicit reward is 0.
    start = metric_lines(tmp_path)[0]
    assert start["step"] == 0 and start["eval/accuracy"] == 0.5 and start["eval/margin"] == 0.0
    assert summary.baseline == {k: v for k, v in start.items() if k != "step"}
    assert "adapter" in summary.outputs


def test_bad_inputs_name_the_problem(base_dir, tmp_path):
    with pytest.raises(FinetuneError, match="matches no Linear module"):
        run(make_config("lora", tmp_path / "a", base_dir, lora={"target_modules": ["*.nope"]}))
    with pytest.raises(ConfigError, match="reward_model"):
        make_config("ppo", tmp_path / "b", base_dir)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(FinetuneError, match="line 1.*rejected"):
        run(
            make_config(
                "dpo", tmp_path / "c", base_dir, data={"source": "jsonl", "path": str(pairs)}
            )
        )
    long = tmp_path / "long.jsonl"
    long.write_text(
        "".join(
            json.dumps({"prompt": "pq"[i % 2] * (i + 1), "response": "x" * (400 if i == 3 else 5)})
            + "\n"
            for i in range(6)
        )
    )
    with pytest.raises(FinetuneError, match="record 3: .* do not fit the context"):
        run(
            make_config(
                "sft", tmp_path / "d", base_dir, data={"source": "jsonl", "path": str(long)}
            )
        )
    with pytest.raises(FinetuneError, match="base.path"):
        run(make_config("sft", tmp_path / "e", tmp_path / "missing"))


def test_cli_runs_a_kind_and_reports_errors_in_one_line(base_dir, tmp_path, capsys):
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\nbase: {{path: {base_dir}}}\ndata: {{count: {PAIRS}}}\n"
        "train: {steps: 2, batch_size: 2, eval_batches: 1}\n"
    )
    assert engine_main(["train", "sft", str(config)]) == 0
    assert "model:" in capsys.readouterr().out
    assert engine_main(["train", "sft", str(config), "--set", "train.stesp=3"]) == 2
    assert "did you mean 'train.steps'" in capsys.readouterr().err


def test_qlora_counts_its_four_bit_weights_in_the_total(base_dir, tmp_path):
    lora = run(make_config("lora", tmp_path / "lora", base_dir, train={"steps": 1}))
    qlora = run(make_config("qlora", tmp_path / "qlora", base_dir, train={"steps": 1}))
    assert qlora.trainable_parameters == lora.trainable_parameters
    assert qlora.total_parameters == lora.total_parameters


def test_a_fresh_run_refuses_a_folder_with_an_earlier_runs_checkpoints(base_dir, tmp_path):
    run(make_config("sft", tmp_path, base_dir, train={"steps": 1}))
    with pytest.raises(FinetuneError, match="earlier run.*--resume"):
        run(make_config("sft", tmp_path, base_dir, train={"steps": 2}))
