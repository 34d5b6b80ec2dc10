"""DPO and a reward model on the small Shakespeare char GPT: held-out preference accuracy.

    .venv/bin/python bench/bench_dpo.py                      # a few CPU minutes (base cached)
    .venv/bin/python bench/bench_dpo.py --corruption mixed   # half the pairs mismatched
    .venv/bin/python bench/bench_dpo.py --lora --sft-steps 40

Stages, all on the post-training base of ``bench/posttrain_common.py`` (4 layers, 128 wide,
256-character context, pre-trained on the plays):

1. Optional (``--sft-steps``): SFT of the base on the training pairs' chosen responses, so
   the chat template's role tokens are known; DPO then starts from and refers to the SFT
   model (the usual pipeline). Off by default: it did not change DPO's held-out accuracy
   here and costs a minute or two of shared CPU.
2. DPO (``engine.finetune.dpo``, sigmoid loss, full weights or ``--lora``) on the training
   preference pairs, each seen once; reference log-probs are computed once up front, so
   the steps run no reference forward.
3. A reward model (``engine.finetune.reward``: a copy of the same start model + a scalar
   head) trained with the Bradley-Terry loss on the same training pairs.

Pairs (``engine.finetune.shakespeare``): prompt = the opening lines of a speech, chosen = its real
continuation, rejected = the same words shuffled (``shuffle``, the default here), another
speech's continuation (``mismatch``) or half of each (``mixed``). Telling which of two
fluent continuations follows a prompt is beyond this 0.8M-parameter character model (val
loss about 2.2): on mismatch pairs both DPO and the reward model stay near chance, so the
default measures the preference the model can learn, and ``--corruption mixed`` shows both
kinds side by side.

Printed on the HELD-OUT pairs (no stage saw them), as ``name: value`` lines:

- ``dpo_accuracy_before/after``: the implicit reward ``beta * (log pi - log ref)`` ranks
  chosen above rejected (before DPO the policy is the reference: every reward is 0, a tie,
  which counts as one half: 50 %);
- ``dpo_logp_margin_before/after``: the policy's own mean log-likelihood margin
  ``log pi(chosen) - log pi(rejected)`` (nats per pair), and ``dpo_logp_accuracy_*`` how
  often the policy itself finds chosen likelier;
- the same figures split by kind of rejected answer (``shuffle`` / ``mismatch``);
- ``reward_accuracy``: the reward model's held-out pair accuracy.

Goal (issue 6): held-out DPO accuracy from about 50 % to 80 % or more, and the
log-likelihood margin grows.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import posttrain_common as common  # noqa: E402

from engine.finetune.dpo import (  # noqa: E402
    dpo_train,
    evaluate_preferences,
    precompute_reference_logps,
)
from engine.finetune.lora import LoRAConfig, apply_lora, trainable_parameters  # noqa: E402
from engine.finetune.preference import PairBatch, preference_batches  # noqa: E402
from engine.finetune.reward import RewardModel, evaluate_reward_model, reward_train  # noqa: E402
from engine.finetune.sft import ChatTemplate, encode_records, pack_examples, sft_train  # noqa: E402


def report(name: str, value: float | int | str) -> None:
    if isinstance(value, float):
        value = f"{value:.4f}"
    print(f"{name}: {value}", flush=True)


def rejected_kind(record: dict) -> str:
    """shuffle: the chosen words in another order; mismatch: another speech's continuation."""
    same_words = sorted(record["chosen"].split()) == sorted(record["rejected"].split())
    return "shuffle" if same_words else "mismatch"


def evaluate(policy, batches_by_kind: dict[str, list[PairBatch]], beta: float) -> dict:
    """evaluate_preferences on all held-out pairs and on each kind alone (reference precomputed)."""
    everything = [b for batches in batches_by_kind.values() for b in batches]
    scores = {"all": evaluate_preferences(policy, None, everything, beta)}
    for kind, batches in batches_by_kind.items():
        scores[kind] = evaluate_preferences(policy, None, batches, beta)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="records before the split")
    parser.add_argument(
        "--corruption",
        choices=("shuffle", "mismatch", "mixed"),
        default="shuffle",
        help="how rejected answers are made (see the module docstring)",
    )
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--sft-steps", type=int, default=0, help="0: DPO from the base")
    parser.add_argument("--sft-lr", type=float, default=5e-4)
    parser.add_argument("--dpo-steps", type=int, default=40)
    parser.add_argument("--dpo-lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per DPO/reward step")
    parser.add_argument("--lora", action="store_true", help="DPO through LoRA adapters (r=16)")
    parser.add_argument("--reward-steps", type=int, default=40)
    parser.add_argument("--reward-lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    base, tokenizer, _ = common.base_model()
    template = ChatTemplate(tokenizer)
    block = base.config.block_size
    train, heldout = common.preference_pairs_split(
        args.seed,
        count=args.pairs,
        corruption=args.corruption,
        heldout_fraction=args.heldout_fraction,
    )
    report("corruption", args.corruption)
    report("train_pairs", len(train))
    report("heldout_pairs", len(heldout))

    # 1. SFT on the chosen responses of the training pairs (optional).
    model = copy.deepcopy(base)
    if args.sft_steps:
        clock = time.perf_counter()
        model.requires_grad_(True)
        sft_records = [{"prompt": r["prompt"], "response": r["chosen"]} for r in train]
        rows = pack_examples(encode_records(template, sft_records), block, template.pad_id)
        losses = sft_train(
            model, rows, steps=args.sft_steps, lr=args.sft_lr, batch_size=8, seed=args.seed
        )
        report("sft_loss_first", losses[0])
        report("sft_loss_last", sum(losses[-10:]) / len(losses[-10:]))
        report("sft_seconds", time.perf_counter() - clock)
    model.eval()

    # 2. DPO from the start model (base or SFT), against it.
    clock = time.perf_counter()
    # Each training pair is seen once: its reference log-probs are computed once, up front.
    used = train[: args.dpo_steps * args.batch_size]
    train_batches = preference_batches(
        template, used, batch_size=args.batch_size, block_size=block, shuffle=True, seed=args.seed
    )
    by_kind = {
        kind: [r for r in heldout if rejected_kind(r) == kind] for kind in ("shuffle", "mismatch")
    }
    policy = copy.deepcopy(model)
    if args.lora:
        apply_lora(policy, LoRAConfig(r=16, alpha=32))
        reference = None  # the adapter-free policy is the start model
    else:
        policy.requires_grad_(True)
        reference = copy.deepcopy(model).requires_grad_(False)
    trainable, total = trainable_parameters(policy)
    report("dpo_mode", "lora r=16" if args.lora else "full weights")
    report("dpo_trainable_parameters", f"{trainable} of {total}")
    heldout_batches = {
        kind: precompute_reference_logps(
            policy,
            reference,
            preference_batches(template, records, batch_size=32, block_size=block),
        )
        for kind, records in by_kind.items()
        if records
    }
    train_batches = precompute_reference_logps(policy, reference, train_batches)
    report("dpo_reference_seconds", time.perf_counter() - clock)
    before = evaluate(policy, heldout_batches, args.beta)

    clock = time.perf_counter()
    history = dpo_train(
        policy,
        None,
        train_batches,
        steps=args.dpo_steps,
        beta=args.beta,
        lr=args.dpo_lr,
        seed=args.seed,
    )
    report("dpo_seconds", time.perf_counter() - clock)
    tail = history[-20:]
    report("dpo_train_loss_last", sum(h["dpo/loss"] for h in tail) / len(tail))
    report("dpo_train_accuracy_last", sum(h["dpo/accuracy"] for h in tail) / len(tail))
    after = evaluate(policy, heldout_batches, args.beta)
    for when, scores in (("before", before), ("after", after)):
        report(f"dpo_accuracy_{when}", scores["all"]["accuracy"])
        report(f"dpo_logp_margin_{when}", scores["all"]["logp_margin"])
        report(f"dpo_logp_accuracy_{when}", scores["all"]["logp_accuracy"])
        report(f"dpo_loss_{when}", scores["all"]["loss"])
        for kind in heldout_batches:
            report(f"dpo_accuracy_{kind}_{when}", scores[kind]["accuracy"])
            report(f"dpo_logp_margin_{kind}_{when}", scores[kind]["logp_margin"])

    # 3. A reward model on the same pairs, from the same start model.
    clock = time.perf_counter()
    reward_model = RewardModel.from_gpt(model)
    reward_history = reward_train(
        reward_model, train_batches, steps=args.reward_steps, lr=args.reward_lr, seed=args.seed
    )
    everything = [b for batches in heldout_batches.values() for b in batches]
    reward_scores = evaluate_reward_model(reward_model, everything)
    tail = reward_history[-20:]
    report("reward_train_loss_last", sum(h["reward/loss"] for h in tail) / len(tail))
    report("reward_accuracy", reward_scores["accuracy"])
    report("reward_margin", reward_scores["margin"])
    for kind, batches in heldout_batches.items():
        report(f"reward_accuracy_{kind}", evaluate_reward_model(reward_model, batches)["accuracy"])
    report("reward_seconds", time.perf_counter() - clock)
    report("total_seconds", time.perf_counter() - started)


if __name__ == "__main__":
    main()
