"""Evaluation of the 4x128 Shakespeare model: held-out perplexity, 64 scored samples and
the memorisation check, timed per phase (issue 14's goal: under 60 s on this machine).

    .venv/bin/python bench/bench_evaluate.py              # the evaluate job's defaults
    .venv/bin/python bench/bench_evaluate.py --full-val   # every window of the val split
    .venv/bin/python bench/bench_evaluate.py --retrain    # train the model again first

Model: configs/shakespeare_char.yaml (nanoGPT's CPU recipe: 4 layers, 4 heads, 128 wide,
context 64) on the character-level Shakespeare shards. The bench is self-contained: the
first run prepares the shards and trains the model for ``--iters`` steps (a minute or
two; it is kept under var/bench/evaluate/ and reused), then exports it to the Hugging
Face GPT-2 folder an `evaluate` job downloads. The evaluation is the job's own engine
call (engine.evaluate.evaluate_text) with the job's default settings: 64 samples of up to
128 tokens from the default prompts, memorisation against the whole train split (~4.5 M
characters, under the 10 M cap).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.evaluate import eval_config, evaluate_text  # noqa: E402
from engine.train.config import load_config  # noqa: E402
from engine.train.export import export_checkpoint  # noqa: E402
from engine.train.recipes import prepare_shakespeare_char  # noqa: E402
from engine.train.trainer import Trainer  # noqa: E402

DATA = ROOT / "var" / "data" / "shakespeare-char"
CONFIG = ROOT / "configs" / "shakespeare_char.yaml"
WORK = ROOT / "var" / "bench" / "evaluate"


def trained_model(iters: int, retrain: bool) -> Path:
    """The exported model folder, trained on the first run (or when asked)."""
    model_dir = WORK / f"model-{iters}"
    if (model_dir / "config.json").is_file() and not retrain:
        return model_dir
    run_dir = WORK / f"run-{iters}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = load_config(
        CONFIG,
        [
            f"run_dir={run_dir}",
            f"data.path={DATA}",
            f"train.max_iters={iters}",
            f"optim.lr_decay_iters={iters}",
            "train.eval_interval=0",
            "train.progress=false",
            "checkpoint.interval=0",
        ],
    )
    started = time.perf_counter()
    summary = Trainer(config, default_callbacks=False).fit()
    print(
        f"trained {iters} steps in {time.perf_counter() - started:.0f} s: "
        f"val loss {summary.val_loss:.3f}"
    )
    shutil.rmtree(model_dir, ignore_errors=True)
    return export_checkpoint(summary.checkpoint, model_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000, help="training steps of the model")
    parser.add_argument("--retrain", action="store_true", help="train the model again")
    parser.add_argument(
        "--full-val", action="store_true", help="score every window of the val split"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    prepare_shakespeare_char(DATA)
    model_dir = trained_model(args.iters, args.retrain)
    settings = {"device": "cpu"}
    if args.full_val:
        settings["eval_batches"] = 10_000
    config = eval_config(settings)
    marks: list[tuple[str, float]] = []
    started = time.perf_counter()
    result = evaluate_text(
        model_dir,
        DATA,
        DATA,
        config,
        on_phase=lambda name, _fraction: marks.append((name, time.perf_counter())),
    )
    total = time.perf_counter() - started
    details = result.details
    print(
        f"model: 4 layers, 128 wide, context 64 ({args.iters} steps); "
        f"{torch.get_num_threads()} threads"
    )
    for phase, seconds in details["seconds"].items():
        print(f"  {phase:<28} {seconds:6.2f} s")
    print(f"  {'total':<28} {total:6.2f} s (goal < 60 s)")
    memorised = details["memorisation"]
    print(
        f"val: {details['val']['tokens']:,} tokens in {details['val']['batches']} batches; "
        f"samples: {len(details['samples'])} x up to {config.sample_tokens} tokens; "
        f"index: {memorised['training_chars']:,} characters, "
        f"{memorised['distinct_spans']:,} distinct {memorised['span_chars']}-character spans"
        + (" (capped)" if memorised["capped"] else "")
    )
    for key, value in result.metrics.items():
        print(f"  {key:<20} {value:.4f}")
    print("first sample:", repr(details["samples"][0]["prompt"] + details["samples"][0]["text"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
