"""What the post-training benchmarks share: a small pre-trained char GPT and Shakespeare pairs.

    import sys; sys.path.insert(0, "bench")
    import posttrain_common as common
    model, tokenizer, folder = common.base_model()   # trained once (a few CPU minutes), then loaded
    train, heldout = common.preference_pairs_split(seed=0)   # records that fit block_size 256
    train, heldout = common.sft_pairs_split(seed=0)          # same prompts on the same sides

Build (or check) the base from the shell:

    .venv/bin/python bench/posttrain_common.py

The base is the nanoGPT character-level recipe at a 256-character context: 4 layers,
4 heads, 128 wide, learned positions, trained by :class:`engine.train.trainer.Trainer`
on the Shakespeare works (every work cut at 90 %: head for training, tail for
validation, as ``engine.train.recipes``), with a character tokenizer that reserves
``DEFAULT_SPECIAL_TOKENS`` (end-of-text and the chat roles, which pre-training never
uses: SFT and DPO learn them). The result is an export folder (config.json,
model.safetensors, tokenizer.json) that ``engine.infer.loading.load_for_generation``
reads, plus ``base.json`` with the recipe and the final losses; a folder whose recipe
differs from :data:`RECIPE` is trained again. A file lock makes concurrent callers wait
for one build instead of training twice.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer, load_tokenizer  # noqa: E402
from engine.finetune.pairs import check_fits, split_pairs  # noqa: E402
from engine.finetune.sft import ChatTemplate  # noqa: E402
from engine.finetune.shakespeare import (  # noqa: E402
    shakespeare_preference_pairs,
    shakespeare_sft_pairs,
)
from engine.infer.loading import load_for_generation  # noqa: E402
from engine.loop.callbacks import Callback  # noqa: E402
from engine.models.gpt import GPT  # noqa: E402
from engine.train.config import config_from_dict  # noqa: E402
from engine.train.export import export_model  # noqa: E402
from engine.train.recipes import prepare_shakespeare_char  # noqa: E402
from engine.train.trainer import Trainer  # noqa: E402

BASE_DIR = ROOT / "var" / "bench" / "posttrain-base"
BLOCK_SIZE = 256
HELDOUT_FRACTION = 0.1
SUMMARY_NAME = "base.json"

# The training recipe; base.json records it, and a cached base with another recipe is rebuilt.
RECIPE: dict[str, Any] = {
    "seed": 1337,
    "model": {
        "block_size": BLOCK_SIZE,  # prompt + response of the pairs fit (engine.finetune.shakespeare)
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 128,
        "dropout": 0.0,  # 1.8M characters seen about once: nothing to regularise
        "position": "learned",
    },
    "optim": {
        "lr": 2e-3,  # a small model and few steps take a high peak rate
        "min_lr": 2e-4,
        "weight_decay": 0.1,
        "beta2": 0.99,  # few tokens per step (nanoGPT's shakespeare_char)
        "grad_clip": 1.0,
        "warmup_iters": 50,
    },
    "train": {
        # 1200 x 6 x 256 = 1.8M characters: 2 min on 2 quiet CPU cores (~15k tokens/s),
        # 8 min when other work shares them. A char model sits on the bigram plateau (loss
        # ~2.5) for ~600 steps whatever the batch; the step count gets it past, so small
        # batches. Result: train 2.18, val 2.17 (4 x 128 at 1.8M characters).
        "max_iters": 1200,
        "batch_size": 6,
        "eval_interval": 300,
        "eval_iters": 10,
        "log_interval": 50,
        "device": "cpu",
        "dtype": "float32",
        "progress": False,
        "threads": 2,
    },
}


class _PrintProgress(Callback):
    """One line per log interval on stdout (the benchmarks run in plain terminals and logs)."""

    def __init__(self, max_iters: int):
        self.max_iters = max_iters
        self.started = time.perf_counter()

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self.started
        if "train/loss" in metrics:
            print(
                f"  base step {step}/{self.max_iters}: train loss {metrics['train/loss']:.3f}, "
                f"{metrics['train/tokens_per_second']:.0f} tokens/s, {elapsed:.0f} s",
                flush=True,
            )
        if "val/loss" in metrics:
            print(f"  base step {step}: val loss {metrics['val/loss']:.3f}", flush=True)


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_dir.with_name(cache_dir.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def base_summary(cache_dir: Path = BASE_DIR) -> dict[str, Any] | None:
    """The cached base's base.json (recipe, losses, seconds), or None when there is none."""
    path = Path(cache_dir) / SUMMARY_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def base_model(cache_dir: Path = BASE_DIR) -> tuple[GPT, CharTokenizer, Path]:
    """(model in eval mode, tokenizer, export folder); trains the base first if needed."""
    cache_dir = Path(cache_dir)
    with _locked(cache_dir):
        summary = base_summary(cache_dir)
        if summary is None or summary.get("recipe") != RECIPE:
            _train_base(cache_dir)
    model, tokenizer = load_for_generation(cache_dir)
    return model, tokenizer, cache_dir


def _train_base(cache_dir: Path) -> None:
    work = cache_dir.with_name(cache_dir.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    data_dir, run_dir, staging = work / "data", work / "run", work / "export"
    # The recipe's shards: every work cut 90/10, a char tokenizer with the chat tokens.
    manifest = prepare_shakespeare_char(data_dir)
    tokenizer = load_tokenizer(data_dir / "tokenizer.json")
    print(
        f"training the post-training base on {manifest.num_tokens('train'):,} characters "
        f"({len(manifest.metadata['works'])} works, vocab {tokenizer.vocab_size}) into {cache_dir}",
        flush=True,
    )
    raw = {
        **RECIPE,
        "run_dir": str(run_dir),
        "data": {"path": str(data_dir)},
        "checkpoint": {"interval": 0, "keep_last": 1},
    }
    trainer = Trainer(config_from_dict(raw, "posttrain base recipe"))
    max_iters = RECIPE["train"]["max_iters"]
    trainer.callbacks.append(_PrintProgress(max_iters))
    result = trainer.fit()
    export_model(
        trainer.model, staging, tokenizer_file=data_dir / "tokenizer.json", eot_id=tokenizer.eot_id
    )
    shutil.copyfile(run_dir / "metrics.jsonl", staging / "metrics.jsonl")
    summary = {
        "recipe": RECIPE,
        "num_params": trainer.model.num_params(),
        "steps": result.step,
        "train_tokens": max_iters * RECIPE["train"]["batch_size"] * BLOCK_SIZE,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "seconds": round(result.seconds, 1),
        "torch": torch.__version__,
    }
    (staging / SUMMARY_NAME).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    # Swap the finished folder in whole: a reader never sees a half-written base.
    shutil.rmtree(cache_dir, ignore_errors=True)
    staging.rename(cache_dir)
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"base ready: train loss {result.train_loss:.3f}, val loss {result.val_loss:.3f}, "
        f"{result.seconds:.0f} s",
        flush=True,
    )


def _fitting_split(
    records: list[dict], seed: int, heldout_fraction: float
) -> tuple[list[dict], list[dict]]:
    # Character tokens: the real tokenizer's length for this text (its vocabulary is a superset).
    text = "".join("".join(record.values()) for record in records)
    template = ChatTemplate(CharTokenizer.train(text, special_tokens=DEFAULT_SPECIAL_TOKENS))
    check_fits(template, records, BLOCK_SIZE)
    return split_pairs(records, heldout_fraction, seed)


def sft_pairs_split(
    seed: int = 0, *, count: int | None = None, heldout_fraction: float = HELDOUT_FRACTION
) -> tuple[list[dict], list[dict]]:
    """(train, heldout) Shakespeare SFT records that fit the base's 256-token context."""
    return _fitting_split(shakespeare_sft_pairs(count, seed=seed), seed, heldout_fraction)


def preference_pairs_split(
    seed: int = 0,
    *,
    count: int | None = None,
    corruption: str = "mixed",
    heldout_fraction: float = HELDOUT_FRACTION,
) -> tuple[list[dict], list[dict]]:
    """(train, heldout) Shakespeare preference records; the same prompts on the same sides
    as :func:`sft_pairs_split` for the same seed and count."""
    records = shakespeare_preference_pairs(count, seed=seed, corruption=corruption)
    return _fitting_split(records, seed, heldout_fraction)


if __name__ == "__main__":
    started = time.perf_counter()
    _, _, folder = base_model()
    summary = base_summary(folder)
    print(
        f"{folder}: {summary['num_params']:,} parameters, train loss {summary['train_loss']:.3f}, "
        f"val loss {summary['val_loss']:.3f}, trained in {summary['seconds']:.0f} s "
        f"(this call {time.perf_counter() - started:.1f} s)"
    )
