"""How long each training stage of the demo runs: long enough to show its effect on a
2-core CPU (the full plan), or seconds a stage for the smoke test (``--quick``).

The full plan was sized on a 2-core machine (docs in README, "Demo"): pre-training to
readable verse, a diffusion model that draws the ten digits, post-training runs whose
held-out figures move. Warm-ups are a share of each run (engine/loop/schedule.py caps a
recipe's own warm-up at a tenth of a shorter run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoPlan:
    # nanoGPT's shakespeare-char recipe: 2000 steps of 12 x 64 characters give verse
    # with real words and speaker names; 150 gave letter soup.
    pretrain_steps: int
    # The 8x8 digits at lr 2e-3: a few hundred steps draw blobs, a thousand draw digits.
    diffusion_steps: int
    diffusion_batch: int
    # LoRA SFT and the reward model: steps of `posttrain_batch` pairs each.
    posttrain_steps: int
    posttrain_batch: int
    # DPO's held-out accuracy is over 90 % within 20 steps; three times longer, the policy
    # drifts from its reference (its answers open with stray characters).
    dpo_steps: int
    # PPO: each step first generates `ppo_rollouts` answers of up to `ppo_new_tokens`
    # characters, so it costs several SFT steps. Prompt and answer share the 64-character
    # context: 40 leaves room for every prompt (at most 20 characters and 2 role tokens).
    ppo_steps: int
    ppo_rollouts: int
    ppo_new_tokens: int
    # Built-in Shakespeare pairs per post-training job (a tenth held out); the plays give
    # 1712 that fit the pre-trained model's 64-character context.
    pairs: int
    # Samples per digit the diffusion job scores with a classifier (0: no evaluation).
    diffusion_eval_per_class: int

    def with_pretrain_steps(self, steps: int | None) -> DemoPlan:
        """The plan with `--train-steps` applied (None: as planned)."""
        return self if steps is None else replace(self, pretrain_steps=steps)


FULL = DemoPlan(
    pretrain_steps=2000,
    diffusion_steps=1500,
    diffusion_batch=64,
    posttrain_steps=120,
    posttrain_batch=16,
    dpo_steps=40,
    ppo_steps=30,
    ppo_rollouts=32,
    ppo_new_tokens=40,
    pairs=1600,
    diffusion_eval_per_class=20,
)
QUICK = DemoPlan(
    pretrain_steps=20,
    diffusion_steps=20,
    diffusion_batch=32,
    posttrain_steps=4,
    posttrain_batch=8,
    dpo_steps=4,
    ppo_steps=2,
    ppo_rollouts=8,
    ppo_new_tokens=16,
    pairs=200,
    diffusion_eval_per_class=0,
)


def warmup(steps: int) -> int:
    """A twentieth of a run warms up (nanoGPT: 100 of 2000 steps)."""
    return max(steps // 20, 1)
