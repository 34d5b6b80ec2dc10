"""PPO (RLHF) on the small Shakespeare char GPT: SFT, a reward model, then PPO against it.

    .venv/bin/python bench/bench_ppo.py                     # the figure's run
    .venv/bin/python bench/bench_ppo.py --rejections harder # a reward model harder to hack
    .venv/bin/python bench/bench_ppo.py --ppo-steps 10      # a quicker look

Time on 2 CPU cores shared with other work: about 10 min the first time (SFT 1.5 min,
reward model 5 min, 60 PPO steps 4 min); SFT and reward model are cached after that.

Stages, all on the post-training base of ``bench/posttrain_common.py`` (4 layers, 128 wide,
256-character context, pre-trained on the plays):

1. SFT of the base on the training SFT pairs (prompt = the opening lines of a speech,
   response = its continuation), loss on the responses only (``sft.sft_train``).
2. A reward model (``reward.RewardModel`` on a copy of the SFT model) trained with the
   Bradley-Terry loss on the training preference pairs: chosen = the real continuation,
   rejected = a corrupted (shuffled words) or mismatched (another speech's) one. Its
   held-out pair accuracy is printed.
3. PPO of the SFT policy (full fine-tuning, value head on its hidden states) against the
   reward model, with a KL penalty to the frozen SFT model; prompts come from the held-out
   pairs, which neither the SFT nor the reward model saw. Every step prints the mean
   reward-model score of the step's responses and their KL to the reference (summed over
   the response tokens, in nats). A fixed set of other held-out prompts is scored before
   and after PPO with the same sampling seed.

Goal (issue 6): the mean score rises over training while the KL stays bounded. Checked:
mean score of the last fifth of the steps above that of the first fifth, the fixed
held-out prompts' mean score higher after PPO, every step's KL below ``--max-kl``.
Writes ``docs/img/ppo-reward-kl.png`` (score, KL and response length per step) and the
per-step metrics to ``var/bench/ppo/metrics-<rejections>.csv``. The SFT and reward models
are cached in ``var/bench/ppo`` (rebuilt when their recipe changes).

What to expect (reward hacking, the textbook case): a reward model that only ever saw
shuffled or mismatched rejections rates a short answer such as "??" above the real
continuation (the probe line after its training), and PPO finds that: the score rises
fast while the responses shrink to a few characters, the KL penalty (about 10 nats for
that) costing far less than the score gained. ``--rejections harder`` also trains the
reward model on truncated continuations and on the SFT model's own samples (as RLHF
reward models compare policy samples, Ouyang et al. 2022); that model ranks "??" below
the real continuation, and PPO raises its score only a little in 60 steps (this policy
writes barely legible text), its responses shortening less.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import posttrain_common as common  # noqa: E402

from engine.finetune.ppo import (  # noqa: E402
    PolicyWithValue,
    PPOConfig,
    PPOTrainer,
    generate_rollouts,
    reward_model_score_fn,
)
from engine.finetune.preference import preference_batches  # noqa: E402
from engine.finetune.reward import (  # noqa: E402
    RewardModel,
    evaluate_reward_model,
    load_reward_model,
    reward_train,
    save_reward_model,
)
from engine.finetune.sft import ChatTemplate, encode_records, pack_examples, sft_train  # noqa: E402

WORK = ROOT / "var" / "bench" / "ppo"
FIGURE = ROOT / "docs" / "img" / "ppo-reward-kl.png"

# Stages 1 and 2; a cached SFT / reward model with another recipe is trained again.
RECIPE = {
    "seed": 0,
    "sft": {"pairs": 2000, "steps": 120, "lr": 5e-4, "batch_size": 8},
    "reward": {
        "pairs": 2400,
        "steps": 150,
        "lr": 2e-4,
        "batch_size": 16,
        "eval_pairs": 400,
        # --rejections harder: of every 3 training pairs, one rejected answer is a
        # truncation of the chosen one, one the SFT model's sample, one the data's.
        "replace_every": 3,
    },
}


def sft_model(base, template, train_sft) -> torch.nn.Module:
    path, recipe_path = WORK / "sft.safetensors", WORK / "sft.json"
    recipe = {"sft": RECIPE["sft"], "seed": RECIPE["seed"], "base": common.RECIPE}
    model = copy.deepcopy(base)
    if recipe_path.is_file() and json.loads(recipe_path.read_text()) == recipe:
        load_model(model, str(path))
        print(f"SFT model: cached ({path})")
        return model.eval()
    cfg = RECIPE["sft"]
    started = time.perf_counter()
    examples = encode_records(template, train_sft[: cfg["pairs"]])
    rows = pack_examples(examples, base.config.block_size, template.pad_id)
    torch.manual_seed(RECIPE["seed"])
    losses = sft_train(
        model, rows, steps=cfg["steps"], lr=cfg["lr"], batch_size=cfg["batch_size"], seed=0
    )
    print(
        f"SFT: {len(examples)} pairs in {len(rows[0])} rows, {cfg['steps']} steps, loss "
        f"{sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    WORK.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    recipe_path.write_text(json.dumps(recipe))
    return model.eval()


def with_harder_rejections(records: list[dict], sft, template, every: int, seed: int) -> list[dict]:
    """Replace some rejected answers: every ``every``-th pair's by a truncation of its chosen
    answer, the next pair's by the SFT model's own sample for its prompt.

    Shuffled and mismatched rejections alone never show the reward model a short or
    model-written answer: trained on them it rates "??" above the real continuation, and
    PPO finds that within ten steps (the responses shrink to a few characters). Comparing
    the policy's own samples with better answers is what RLHF reward models are trained on
    (Ouyang et al. 2022); here the better answer is the real continuation.
    """
    rng = random.Random(seed)
    out = [dict(record) for record in records]
    for index, record in enumerate(out):
        words = record["chosen"].split(" ")
        if index % every == 0 and len(words) > 1:
            record["rejected"] = " ".join(words[: rng.randint(1, max(1, len(words) // 2))])
    sampled = [i for i in range(len(out)) if i % every == 1]
    policy = PolicyWithValue(sft).eval()
    config = PPOConfig(rollout_batch_size=64, minibatch_size=64, max_new_tokens=96)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(sampled), 64):
        chunk = sampled[start : start + 64]
        prompts = [template.encode_prompt(out[i]["prompt"]) for i in chunk]
        rollout = generate_rollouts(
            policy, prompts, config, template.eot_id, template.pad_id, generator
        )
        for row, i in enumerate(chunk):
            ids = rollout.responses[row][rollout.response_mask[row]].tolist()
            text = template.tokenizer.decode([t for t in ids if t != template.eot_id])
            if text.strip():
                out[i]["rejected"] = text
    return out


def reward_model(sft, template, train_pref, heldout_pref, rejections: str) -> RewardModel:
    directory = WORK / f"reward-{rejections}"
    recipe_path = WORK / f"reward-{rejections}.json"
    recipe = {"reward": RECIPE["reward"], "sft": RECIPE["sft"], "base": common.RECIPE}
    cfg = RECIPE["reward"]
    block = sft.config.block_size
    eval_batches = preference_batches(
        template, heldout_pref[-cfg["eval_pairs"] :], batch_size=32, block_size=block
    )
    if recipe_path.is_file() and json.loads(recipe_path.read_text()) == recipe:
        model = load_reward_model(directory)
        print(f"reward model: cached ({directory})")
    else:
        started = time.perf_counter()
        torch.manual_seed(RECIPE["seed"])
        model = RewardModel.from_gpt(sft)
        records = train_pref[: cfg["pairs"]]
        if rejections == "harder":
            every = cfg["replace_every"]
            records = with_harder_rejections(records, sft, template, every, RECIPE["seed"])
        batches = preference_batches(
            template,
            records,
            batch_size=cfg["batch_size"],
            block_size=block,
            shuffle=True,
        )
        history = reward_train(model, batches, steps=cfg["steps"], lr=cfg["lr"], seed=0)
        accuracy = sum(h["reward/accuracy"] for h in history[-20:]) / 20
        print(
            f"reward model: {cfg['steps']} Bradley-Terry steps, training accuracy (last 20) "
            f"{accuracy:.2f}, {time.perf_counter() - started:.0f} s"
        )
        save_reward_model(model, directory)
        recipe_path.write_text(json.dumps(recipe))
    model.eval().requires_grad_(False)
    scores = evaluate_reward_model(model, eval_batches)
    print(
        f"reward model, {cfg['eval_pairs']} held-out pairs: accuracy {scores['accuracy']:.2f}, "
        f"margin {scores['margin']:.2f}"
    )
    # A reward-hacking probe: a degenerate answer against the real and the rejected ones.
    probe = heldout_pref[-cfg["eval_pairs"] :][:64]
    means = {
        name: mean_score(
            model, template, [{"prompt": r["prompt"], "response": answer(r)} for r in probe]
        )
        for name, answer in (
            ("real continuation", lambda r: r["chosen"]),
            ("rejected", lambda r: r["rejected"]),
            ("'??'", lambda r: "??"),
        )
    }
    print(
        "reward model, mean score of 64 held-out prompts' "
        + ", ".join(f"{name} {value:+.2f}" for name, value in means.items())
    )
    return model


@torch.no_grad()
def mean_score(model: RewardModel, template, records: list[dict]) -> float:
    examples = encode_records(template, records)
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), template.pad_id)
    for row, example in enumerate(examples):
        ids[row, : len(example.ids)] = torch.tensor(example.ids)
    lengths = torch.tensor([len(e.ids) for e in examples])
    return model(ids, lengths).mean().item()


@torch.no_grad()
def heldout_score(trainer: PPOTrainer, prompts: list[list[int]], seed: int) -> tuple[float, float]:
    """Mean score and KL of one response per prompt, sampled with a fixed seed."""
    trainer.policy.eval()
    generator = torch.Generator().manual_seed(seed)
    rollout = generate_rollouts(
        trainer.policy, prompts, trainer.config, trainer.eot_id, trainer.pad_id, generator
    )
    scores = trainer.score(rollout)
    kl = (rollout.logprobs - trainer.reference_logprobs(rollout)) * rollout.response_mask
    return scores.mean().item(), kl.sum(dim=1).mean().item()


def sample_text(trainer: PPOTrainer, template, prompt: list[int], seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    rollout = generate_rollouts(
        trainer.policy, [prompt], trainer.config, trainer.eot_id, trainer.pad_id, generator
    )
    ids = rollout.responses[0][rollout.response_mask[0]].tolist()
    return template.tokenizer.decode([i for i in ids if i != trainer.eot_id])


def write_figure(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, len(history) + 1))
    panels = (
        ("ppo/reward", "mean reward-model score", "tab:blue"),
        ("ppo/kl", "KL to the SFT model\n(nats / response)", "tab:red"),
        ("ppo/response_length", "mean response length\n(characters)", "tab:gray"),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 7), sharex=True)
    for axis, (key, label, color) in zip(axes, panels, strict=True):
        values = [m[key] for m in history]
        axis.plot(steps, values, color=color, lw=1, alpha=0.5)
        axis.plot(steps, smooth(values), color=color, lw=2)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=10)
    axes[-1].set_xlabel("PPO step (one batch of rollouts; thick: mean of the last 5)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def smooth(values: list[float], window: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppo-steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16, help="rollouts per PPO step")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--target-kl", type=float, default=None)
    parser.add_argument(
        "--max-kl", type=float, default=20.0, help="bound every step's KL must keep"
    )
    parser.add_argument(
        "--rejections",
        choices=("data", "harder"),
        default="data",
        help="the reward model's rejected answers: the data's (shuffled or mismatched), or "
        "also truncations and SFT samples (with_harder_rejections)",
    )
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    base, tokenizer, folder = common.base_model()
    template = ChatTemplate(tokenizer)
    train_sft, _ = common.sft_pairs_split(seed=RECIPE["seed"])
    train_pref, heldout_pref = common.preference_pairs_split(seed=RECIPE["seed"])
    print(f"base: {folder} ({base.num_params():,} parameters)")
    sft = sft_model(base, template, train_sft)
    rm = reward_model(sft, template, train_pref, heldout_pref, args.rejections)

    # Held-out prompts: the reward model's evaluation pairs come last, PPO prompts first.
    prompts = list(
        dict.fromkeys(r["prompt"] for r in heldout_pref[: -RECIPE["reward"]["eval_pairs"]])
    )
    eval_prompts = [template.encode_prompt(p) for p in prompts[: args.eval_prompts]]
    ppo_prompts = [template.encode_prompt(p) for p in prompts[args.eval_prompts :]]

    torch.manual_seed(RECIPE["seed"])
    policy = PolicyWithValue(copy.deepcopy(sft)).requires_grad_(True)
    reference = copy.deepcopy(sft)
    config = PPOConfig(
        rollout_batch_size=args.batch,
        minibatch_size=8,
        max_new_tokens=args.max_new_tokens,
        kl_coef=args.kl_coef,
        target_kl=args.target_kl,
        ppo_epochs=4,
        seed=RECIPE["seed"],
    )
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    trainer = PPOTrainer(
        policy,
        reference,
        reward_model_score_fn(rm, template.pad_id),
        config,
        optimizer,
        eot_id=template.eot_id,
        pad_id=template.pad_id,
    )
    before = heldout_score(trainer, eval_prompts, seed=1)
    print(f"held-out prompts before PPO: score {before[0]:.3f}, KL {before[1]:.2f}")
    sample_prompt = eval_prompts[0]
    sample_before = sample_text(trainer, template, sample_prompt, seed=2)

    history = []
    order = torch.Generator().manual_seed(RECIPE["seed"])
    ppo_started = time.perf_counter()
    for step in range(1, args.ppo_steps + 1):
        picks = torch.randperm(len(ppo_prompts), generator=order)[: args.batch].tolist()
        metrics = trainer.step([ppo_prompts[i] for i in picks])
        history.append(metrics)
        print(
            f"step {step:3d}: score {metrics['ppo/reward']:+.3f}  KL {metrics['ppo/kl']:6.2f}  "
            f"entropy {metrics['ppo/entropy']:.2f}  clipfrac {metrics['ppo/clipfrac']:.2f}  "
            f"len {metrics['ppo/response_length']:5.1f}  ended {metrics['ppo/ended']:.2f}  "
            f"beta {metrics['ppo/kl_coef']:.3f}  {time.perf_counter() - ppo_started:.0f} s",
            flush=True,
        )
    after = heldout_score(trainer, eval_prompts, seed=1)
    print(f"held-out prompts after PPO: score {after[0]:.3f}, KL {after[1]:.2f}")
    prompt_text = template.tokenizer.decode(sample_prompt)
    print(f"sample prompt: {prompt_text!r}")
    print(f"  before PPO: {sample_before!r}")
    print(f"  after PPO:  {sample_text(trainer, template, sample_prompt, seed=2)!r}")

    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / f"metrics-{args.rejections}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", *history[0]])
        writer.writeheader()
        for step, metrics in enumerate(history, start=1):
            writer.writerow({"step": step, **metrics})
    if not args.no_figure:
        title = (
            f"PPO of the SFT Shakespeare char GPT against a reward model\n"
            f"({args.rejections!r} rejections), kl_coef {args.kl_coef}, "
            f"{args.batch} rollouts per step"
        )
        write_figure(history, FIGURE, title)
        print(f"figure: {FIGURE.relative_to(ROOT)}")

    fifth = max(1, len(history) // 5)
    first = sum(m["ppo/reward"] for m in history[:fifth]) / fifth
    last = sum(m["ppo/reward"] for m in history[-fifth:]) / fifth
    kls = [m["ppo/kl"] for m in history]
    print(
        f"mean score: first {fifth} steps {first:+.3f}, last {fifth} steps {last:+.3f}; "
        f"held-out {before[0]:+.3f} -> {after[0]:+.3f}; KL per step in "
        f"[{min(kls):.2f}, {max(kls):.2f}] nats; response length "
        f"{history[0]['ppo/response_length']:.0f} -> {history[-1]['ppo/response_length']:.0f}; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    ok = last > first and after[0] > before[0] and max(kls) < args.max_kl
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
