"""LoRA vs full fine-tuning: SFT loss improvement per trained parameter, through engine.finetune.run.

    .venv/bin/python bench/bench_lora.py [--steps 300] [--rank 2] [--qlora]

The base is the small pre-trained char GPT of posttrain_common (trained once, cached).
Every run uses the product's code path (the run loop a job uses) on the same built-in
Shakespeare SFT pairs with the same seed, steps and batch size; each kind gets the
learning rate that suits it. Prints, as ``name: value`` lines:

- the held-out SFT loss of the base, after full fine-tuning and after LoRA (and QLoRA);
- each improvement and LoRA's (QLoRA's) as a share of full fine-tuning's (goal >= 0.90);
- the share of parameters each trains (goal for LoRA: under 2%);
- that the merged export gives the unmerged adapter model's logits (max abs difference).

Goal (issue 6): LoRA trains under 2% of the parameters and gets within 10% of full
fine-tuning's SFT loss improvement on the same data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import posttrain_common as common  # noqa: E402

from engine.finetune.config import config_from_dict  # noqa: E402
from engine.finetune.lora import load_adapter  # noqa: E402
from engine.finetune.run import run  # noqa: E402
from engine.infer.loading import load_for_generation  # noqa: E402

RUNS = common.ROOT / "var" / "bench" / "lora"


def finetune(kind: str, base: Path, args: argparse.Namespace, lr: float, **extra) -> dict:
    raw = {
        "run_dir": str(RUNS / kind),
        "seed": 0,
        "base": {"path": str(base)},
        "data": {"source": "shakespeare", "count": args.pairs},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": lr,
            "warmup_steps": 20,
            "log_interval": 25,
            "eval_interval": 0,
            "eval_batches": 16,
        },
        **extra,
    }
    shutil.rmtree(RUNS / kind, ignore_errors=True)
    started = time.perf_counter()
    summary = run(config_from_dict(kind, raw))
    return {
        "before": summary.baseline["eval/loss"],
        "after": summary.evaluation["eval/loss"],
        "trainable": summary.trainable_parameters,
        "total": summary.total_parameters,
        "seconds": time.perf_counter() - started,
        "outputs": summary.outputs,
    }


@torch.no_grad()
def merged_matches_unmerged(base: Path, outputs: dict) -> float:
    """Max |logit difference| between the merged export and base + the saved adapter."""
    merged, tokenizer = load_for_generation(outputs["model"])
    adapted, _ = load_for_generation(base)
    load_adapter(adapted, outputs["adapter"])
    adapted.eval()
    ids = torch.tensor([tokenizer.encode("<|user|>To be, or not to be<|assistant|>That is")])
    return (merged(ids)[0] - adapted(ids)[0]).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--lr-full", type=float, default=3e-4)
    parser.add_argument("--lr-lora", type=float, default=3e-3)
    parser.add_argument("--qlora", action="store_true", help="also run QLoRA (4-bit base)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    _, _, base = common.base_model()
    lora_section = {"lora": {"r": args.rank, "alpha": 2.0 * args.rank}}
    results = {"full": finetune("sft", base, args, args.lr_full)}
    results["lora"] = finetune("lora", base, args, args.lr_lora, **lora_section)
    if args.qlora:
        results["qlora"] = finetune("qlora", base, args, args.lr_lora, **lora_section)
    full_gain = results["full"]["before"] - results["full"]["after"]
    print(f"steps: {args.steps} x {args.batch_size} pairs, LoRA rank {args.rank}")
    print(f"heldout_sft_loss_base: {results['full']['before']:.4f}")
    for name, result in results.items():
        gain = result["before"] - result["after"]
        share = 100 * result["trainable"] / result["total"]
        print(f"heldout_sft_loss_{name}: {result['after']:.4f}")
        print(f"improvement_{name}: {gain:.4f}")
        print(
            f"trainable_share_{name}: {share:.2f}% ({result['trainable']:,} of {result['total']:,})"
        )
        print(f"seconds_{name}: {result['seconds']:.1f}")
        if name != "full":
            print(f"improvement_ratio_{name}_vs_full: {gain / full_gain:.3f} (goal >= 0.90)")
    difference = merged_matches_unmerged(base, results["lora"]["outputs"])
    print(f"merged_vs_unmerged_max_abs_logit_diff: {difference:.2e}")


if __name__ == "__main__":
    main()
