"""PPO for RLHF: a policy with a value head, KV-cache rollouts, a KL penalty to a reference, GAE.

    from engine.finetune.ppo import PPOConfig, PolicyWithValue, PPOTrainer, reward_model_score_fn
    policy = PolicyWithValue(sft_gpt)                # apply LoRA to the GPT first, if at all
    reference = copy.deepcopy(sft_gpt).eval()        # frozen; or None under LoRA (adapters off)
    score_fn = reward_model_score_fn(reward_model, pad_id=template.pad_id)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    trainer = PPOTrainer(policy, reference, score_fn, PPOConfig(), optimizer, eot_id=tok.eot_id)
    for prompts in batches:                          # lists of token ids ending in <|assistant|>
        metrics = trainer.step(prompts)              # {"ppo/reward": ..., "ppo/kl": ..., ...}

One :meth:`PPOTrainer.step` is the loop of Ouyang et al. (2022) and Ziegler et al. (2019),
with the choices of "The N Implementation Details of RLHF with PPO" (Huang et al. 2024):

1. Rollout: the policy samples a response to each prompt through the KV cache (prompts
   left-padded, ``attention_mask`` marks real tokens), until end-of-text or
   ``max_new_tokens``. For each response token it records the log-prob of the sampled token
   and the value of the state it was sampled in. The end-of-text token is part of the response
   (stopping is an action); whatever follows it is padding, masked out.
2. Score: ``score_fn(sequences, attention_mask) -> (B,)``, e.g. a reward model, once per
   response, given at its last token.
3. Per-token reward: ``r_t = -kl_coef * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))``, plus the
   score at the last token (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022, eq. 2). The
   summed per-token difference is the sequence KL estimate reported as ``ppo/kl``.
4. Advantages by GAE (Schulman et al. 2016, eq. 16), returns = advantages + values; the
   advantages are whitened over the batch's response tokens.
5. ``ppo_epochs`` passes over shuffled minibatches: the clipped surrogate (Schulman et al.
   2017, eq. 7), the clipped value loss, optional entropy bonus, one optimizer step each.
6. Optional adaptive KL coefficient toward ``target_kl`` (Ziegler et al. 2019, section 2.2).

Log-probs use ``softmax(logits / temperature)`` everywhere (rollout, recomputation,
reference), so the importance ratio is exactly 1 before the first update. ``top_k`` only
narrows sampling, which makes the samples slightly off-policy: leave it None unless needed.
Dropout would make the recomputed log-probs differ from the rollout's, so the policy and the
reference run in eval mode throughout (gradients still flow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from engine.configfile import check_ranges, setting
from engine.finetune.lora import lora_modules, set_adapters_enabled
from engine.finetune.objective import BatchOrder, FinetuneError, Objective
from engine.models.gpt import GPT, KVCache

# (sequences (B, T), attention_mask (B, T) bool) -> scores (B,); sequences hold the
# left-padded prompt then the response (end-of-text included when it was sampled).
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PPOConfig:
    # Prompts (episodes) per step; advantages are whitened over them.
    rollout_batch_size: int = setting(16, minimum=1, maximum=512, help="prompts per step")
    # Response length cap; a response may stop earlier at end-of-text.
    max_new_tokens: int = setting(64, minimum=1, maximum=1024, help="response length cap")
    # 1 samples the policy itself; log-probs use the same temperature.
    temperature: float = setting(
        1.0, exclusiveMinimum=0.0, maximum=5.0, help="sampling temperature of the rollouts"
    )
    top_k: int | None = None  # sampling only; narrows the samples off-policy, so None by default
    # Beta of the KL penalty (the initial value when adaptive).
    kl_coef: float = setting(0.05, minimum=0.0, maximum=10.0, help="weight of the KL penalty")
    target_kl: float | None = None  # per-sequence KL the adaptive controller aims at; None: fixed
    kl_horizon: int = 10000  # episodes over which the controller corrects (Ziegler's K_beta)
    gamma: float = 1.0  # no discounting: the score comes once, at the end of a short episode
    lam: float = 0.95  # GAE lambda: bias (0, one-step TD) vs variance (1, Monte Carlo)
    # Epsilon of the clipped surrogate (Schulman et al. 2017).
    clip_range: float = setting(
        0.2, exclusiveMinimum=0.0, maximum=1.0, help="epsilon of the clipped surrogate"
    )
    clip_range_value: float = 0.2  # values move at most this far from the rollout's per update
    vf_coef: float = 0.1  # value loss weight; the value head shares the policy's backbone
    entropy_coef: float = 0.0  # entropy bonus; the KL penalty already keeps the policy spread
    # Passes over each batch of rollouts (sample efficiency vs staleness).
    ppo_epochs: int = setting(4, minimum=1, maximum=16, help="passes over each rollout batch")
    minibatch_size: int = 8  # rollouts per optimizer step; must divide rollout_batch_size
    whiten_advantages: bool = True  # zero mean, unit variance: one step size fits any reward scale
    max_grad_norm: float | None = 1.0  # clip the global gradient norm; None: no clipping
    # Score given instead of the reward model's to responses that never end (hit
    # max_new_tokens): otherwise the policy can learn to ramble (N details, "EOS trick").
    missing_eot_penalty: float | None = None
    seed: int = 0  # the rollout sampler's generator: same seed and weights, same rollouts

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise ValueError(f"ppo.{name} must be {rule}, got {getattr(self, name)!r}")

        # rollout_batch_size, max_new_tokens, temperature, kl_coef, clip_range, ppo_epochs:
        # the fields' own ranges (the job schemas show the same).
        check_ranges(self, ValueError, "ppo.")
        if self.kl_horizon < 1:
            fail("kl_horizon", "at least 1")
        if not 1 <= self.minibatch_size <= self.rollout_batch_size:
            fail("minibatch_size", f"in [1, rollout_batch_size={self.rollout_batch_size}]")
        if self.rollout_batch_size % self.minibatch_size:
            fail("minibatch_size", f"a divisor of rollout_batch_size={self.rollout_batch_size}")
        if self.top_k is not None and self.top_k < 1:
            fail("top_k", "None or at least 1")
        for name in ("vf_coef", "entropy_coef"):
            if not getattr(self, name) >= 0.0:
                fail(name, "non-negative")
        if self.target_kl is not None and not self.target_kl > 0.0:
            fail("target_kl", "None or positive")
        if not 0.0 < self.gamma <= 1.0:
            fail("gamma", "in (0, 1]")
        if not 0.0 <= self.lam <= 1.0:
            fail("lam", "in [0, 1]")
        if not self.clip_range_value > 0.0:
            fail("clip_range_value", "positive")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0.0:
            fail("max_grad_norm", "None or positive")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class PolicyWithValue(nn.Module):
    """A GPT plus ``value_head = nn.Linear(n_embd, 1)`` on the hidden states its lm_head reads.

    Apply LoRA to the GPT before wrapping it: ``apply_lora`` freezes every parameter of the
    module it is given, the value head included.
    """

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        weight = gpt.lm_head.weight
        self.value_head = nn.Linear(gpt.config.n_embd, 1, device=weight.device, dtype=weight.dtype)
        # Zero init: every value starts at 0 and the first updates fit it to the returns,
        # instead of random values feeding noise into the first advantages.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """idx (B, T) -> logits (B, T, vocab) and values (B, T)."""
        hidden = self.gpt.hidden_states(idx, attention_mask=attention_mask)  # (B, T, C)
        return self.gpt.lm_head(hidden), self.value_head(hidden).squeeze(-1)


@dataclass
class Rollout:
    """A batch of sampled responses; R = the longest response in the batch."""

    sequences: torch.Tensor  # (B, P + R) left-padded prompt, then response, then padding
    attention_mask: torch.Tensor  # (B, P + R) bool, True for real tokens (prompt and response)
    prompt_length: int  # P, the padded prompt width
    response_mask: torch.Tensor  # (B, R) bool, generated tokens up to and including end-of-text
    logprobs: torch.Tensor  # (B, R) log pi_old(a_t | s_t) of the sampled tokens, 0 where masked
    values: torch.Tensor  # (B, R) V_old(s_t) of the state each token was sampled in, 0 where masked
    ended: torch.Tensor  # (B,) bool, True where the response ends with end-of-text

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]  # (B, R)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)  # (B,)


def _sample(logits: torch.Tensor, top_k: int | None, generator: torch.Generator | None):
    """logits (B, V), already divided by the temperature -> token ids (B,)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_rollouts(
    policy: PolicyWithValue,
    prompts: Sequence[Sequence[int]],
    config: PPOConfig,
    eot_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample one response per prompt with the KV cache; see :class:`Rollout` for what it holds."""
    if not prompts:
        raise ValueError("no prompts given")
    gpt = policy.gpt
    block_size = gpt.config.block_size
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {index} is empty")
        if len(prompt) + config.max_new_tokens > block_size:
            raise ValueError(
                f"prompt {index}: {len(prompt)} tokens + max_new_tokens "
                f"{config.max_new_tokens} exceed the context of {block_size} tokens"
            )
    weight = gpt.lm_head.weight
    device = weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, P), dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, P - len(prompt) :] = torch.tensor(list(prompt), device=device)
        mask[row, P - len(prompt) :] = True
    prompt_mask = mask
    cache = KVCache(gpt.config, B, P + config.max_new_tokens, device, weight.dtype)
    hidden = gpt.hidden_states(tokens, cache=cache, attention_mask=mask)[:, -1]  # (B, C)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    taken, logprobs, values, alive_steps = [], [], [], []
    for step in range(config.max_new_tokens):
        logits = gpt.lm_head(hidden).float() / config.temperature  # (B, V)
        token = _sample(logits, config.top_k, generator)
        alive = ~finished
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        logprob = logits.log_softmax(dim=-1).gather(-1, token[:, None]).squeeze(-1)
        value = policy.value_head(hidden).squeeze(-1).float()
        taken.append(token)
        logprobs.append(torch.where(alive, logprob, 0.0))
        values.append(torch.where(alive, value, 0.0))
        alive_steps.append(alive)
        finished = finished | (token == eot_id)
        if bool(finished.all()) or step == config.max_new_tokens - 1:
            break
        # A token sampled after end-of-text is padding: out of attention from here on.
        mask = torch.cat([mask, alive[:, None]], dim=1)
        hidden = gpt.hidden_states(token[:, None], cache=cache, attention_mask=mask)[:, -1]
    response_mask = torch.stack(alive_steps, dim=1)  # (B, R)
    return Rollout(
        sequences=torch.cat([tokens, torch.stack(taken, dim=1)], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        prompt_length=P,
        response_mask=response_mask,
        logprobs=torch.stack(logprobs, dim=1),
        values=torch.stack(values, dim=1),
        ended=finished,
    )


def response_logits(
    model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B, R, V) predicting each response token, and values (B, R) for a PolicyWithValue.

    ``model(idx, attention_mask=...)`` must return ``(logits, second)``: a GPT (second is
    its loss, None) or a PolicyWithValue (second is the values).
    """
    # Position t's logits predict token t + 1: the response tokens P .. P+R-1 are read off
    # positions P-1 .. P+R-2, the states they were sampled in.
    logits, second = model(sequences[:, :-1], attention_mask=attention_mask[:, :-1])
    values = second[:, prompt_length - 1 :] if isinstance(model, PolicyWithValue) else None
    return logits[:, prompt_length - 1 :], values


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) of the given tokens. logits (B, R, V), tokens (B, R)."""
    logp = (logits.float() / temperature).log_softmax(dim=-1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)  # (B, R)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries; masked-out entries become 0."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask.to(values.dtype)


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) -> (advantages, returns).

    rewards, values, mask: (B, R); each row's mask is a prefix of True (its response). The
    state after the last token is terminal (value 0); masked-out entries come back 0.
    """
    mask = mask.to(rewards.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # A_{t+1}
    R = rewards.size(1)
    for t in reversed(range(R)):
        # values[:, t + 1] is 0 past the end of a response, which makes that state terminal.
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # TD error, eq. 10
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate (Schulman et al. 2017, eq. 7) as a loss; all inputs (B, R).

    Returns the loss and ``clipfrac`` (share of tokens where the clip is the active term)
    and ``approx_kl`` (k3 = (r - 1) - log r, unbiased and never negative, of KL(old || new)).
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    # The max of the two losses = the min of the two objectives: the pessimistic bound,
    # so moving the ratio past 1 +/- clip_range in the advantage's direction earns nothing.
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI's baselines PPO2): 0.5 * max of the two squared errors."""
    clipped = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        stats = {"value_clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position. logits (B, R, V) -> (B, R)."""
    logp = (logits.float() / temperature).log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon) (Ziegler et al. 2019)."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value = kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, episodes: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * episodes / self.horizon


def left_to_right_padded(
    sequences: torch.Tensor, attention_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the left: -> (input_ids (B, T), lengths (B,)).

    Rollouts are left-padded (prompts) and right-padded (responses); reward models read the
    last real token of right-padded rows, as they were trained.
    """
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    # A stable sort of "is padding" brings the real tokens, in order, to the front.
    order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices
    ids = sequences.gather(1, order)
    keep = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]
    return torch.where(keep, ids, torch.full_like(ids, pad_id)), lengths


def reward_model_score_fn(reward_model: nn.Module, pad_id: int) -> ScoreFn:
    """A ScoreFn from a module called as ``reward_model(input_ids, lengths) -> (B,)``."""

    def score(sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, lengths = left_to_right_padded(sequences, attention_mask, pad_id)
        return reward_model(ids, lengths)

    return score


class PPOTrainer:
    def __init__(
        self,
        policy: PolicyWithValue,
        reference: nn.Module | None,
        score_fn: ScoreFn,
        config: PPOConfig,
        optimizer: torch.optim.Optimizer,
        *,
        eot_id: int,
        pad_id: int | None = None,
    ):
        """``reference`` None: the policy's GPT with its LoRA adapters switched off.

        A reference module is called as ``reference(idx, attention_mask=...) -> (logits, _)``
        (a GPT or a PolicyWithValue) and never trained. ``pad_id`` defaults to ``eot_id``:
        padding never enters attention or the losses, so any id does.
        """
        if not isinstance(policy, PolicyWithValue):
            raise ValueError("the policy must be a PolicyWithValue (a GPT with a value head)")
        if reference is None and not lora_modules(policy.gpt):
            raise ValueError(
                "reference None means the policy with its LoRA adapters switched off, but the "
                "policy has no adapters; pass a frozen copy of the starting model as reference"
            )
        if not all(p.requires_grad for p in policy.value_head.parameters()):
            raise ValueError(
                "the value head is frozen; apply LoRA to the GPT before wrapping it in "
                "PolicyWithValue"
            )
        if reference is not None:
            reference.eval().requires_grad_(False)
        self.policy = policy
        self.reference = reference
        self.score_fn = score_fn
        self.config = config
        self.optimizer = optimizer
        self.eot_id = eot_id
        self.pad_id = eot_id if pad_id is None else pad_id
        self.kl_coef = config.kl_coef
        self.kl_controller = (
            AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
            if config.target_kl is not None
            else None
        )
        device = policy.gpt.lm_head.weight.device
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.steps = 0

    @property
    def current_kl_coef(self) -> float:
        return self.kl_controller.value if self.kl_controller is not None else self.kl_coef

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """log pi_ref of the response tokens, (B, R)."""
        args = (rollout.sequences, rollout.attention_mask, rollout.prompt_length)
        if self.reference is None:
            set_adapters_enabled(self.policy.gpt, False)
            try:
                logits, _ = response_logits(self.policy.gpt, *args)
            finally:
                set_adapters_enabled(self.policy.gpt, True)
        else:
            logits, _ = response_logits(self.reference, *args)
        return token_logprobs(logits, rollout.responses, self.config.temperature)

    @torch.no_grad()
    def score(self, rollout: Rollout) -> torch.Tensor:
        """The score of each response, (B,), with the missing end-of-text penalty applied."""
        scores = self.score_fn(rollout.sequences, rollout.attention_mask)
        B = rollout.sequences.size(0)
        if not isinstance(scores, torch.Tensor) or scores.shape != (B,):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
            raise ValueError(f"score_fn must return a tensor of shape ({B},), got {shape}")
        scores = scores.float()
        if self.config.missing_eot_penalty is not None:
            penalty = torch.full_like(scores, self.config.missing_eot_penalty)
            scores = torch.where(rollout.ended, scores, penalty)
        return scores

    def step(self, prompts: Sequence[Sequence[int]]) -> dict[str, float]:
        """One rollout batch and its PPO updates; returns the step's metrics (floats)."""
        cfg = self.config
        if len(prompts) != cfg.rollout_batch_size:
            raise ValueError(
                f"step() takes ppo.rollout_batch_size={cfg.rollout_batch_size} prompts, "
                f"got {len(prompts)}"
            )
        self.policy.eval()  # no dropout: recomputed log-probs must match the rollout's
        rollout = generate_rollouts(
            self.policy, prompts, cfg, self.eot_id, self.pad_id, self.generator
        )
        mask = rollout.response_mask
        B = mask.size(0)
        scores = self.score(rollout)
        ref_logprobs = self.reference_logprobs(rollout)
        kl_coef = self.current_kl_coef
        with torch.no_grad():
            kl = (rollout.logprobs - ref_logprobs) * mask  # (B, R), k1 estimate per token
            rewards = -kl_coef * kl
            last = rollout.response_lengths - 1  # (B,) index of each response's last token
            rewards[torch.arange(B, device=mask.device), last] += scores
            advantages, returns = compute_gae(rewards, rollout.values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, mask)
        totals: dict[str, float] = {}
        updates = 0
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for _epoch in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=self.generator, device=self.generator.device)
            for start in range(0, B, cfg.minibatch_size):
                rows = order[start : start + cfg.minibatch_size].to(mask.device)
                stats = self._update(rollout, rows, advantages, returns, params)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        mean_kl = kl.sum(dim=1).mean().item()
        if self.kl_controller is not None:
            self.kl_controller.update(mean_kl, B)
        self.steps += 1
        metrics = {f"ppo/{key}": value / updates for key, value in totals.items()}
        metrics.update(
            {
                "ppo/reward": scores.mean().item(),
                "ppo/kl": mean_kl,
                "ppo/kl_coef": kl_coef,
                "ppo/response_length": rollout.response_lengths.float().mean().item(),
                "ppo/ended": rollout.ended.float().mean().item(),
            }
        )
        return metrics

    def _update(self, rollout, rows, advantages, returns, params) -> dict[str, float]:
        """One optimizer step on the rollouts ``rows``; returns its statistics."""
        cfg = self.config
        mask = rollout.response_mask[rows]
        logits, values = response_logits(
            self.policy,
            rollout.sequences[rows],
            rollout.attention_mask[rows],
            rollout.prompt_length,
        )
        logprobs = token_logprobs(logits, rollout.responses[rows], cfg.temperature)
        policy_loss, policy_stats = ppo_policy_loss(
            logprobs, rollout.logprobs[rows], advantages[rows], mask, cfg.clip_range
        )
        value_loss, value_stats = ppo_value_loss(
            values.float(), rollout.values[rows], returns[rows], mask, cfg.clip_range_value
        )
        entropy = masked_mean(entropy_from_logits(logits, cfg.temperature), mask)
        loss = policy_loss + cfg.vf_coef * value_loss - cfg.entropy_coef * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        self.optimizer.step()
        return {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy": entropy.item(),
            **{key: value.item() for key, value in {**policy_stats, **value_stats}.items()},
        }

    def state_dict(self) -> dict:
        """What resuming needs besides the weights and the optimizer (saved by the caller)."""
        return {
            "steps": self.steps,
            "kl_coef": self.current_kl_coef,
            "generator": self.generator.get_state(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        if self.kl_controller is not None:
            self.kl_controller.value = float(state["kl_coef"])
        else:
            self.kl_coef = float(state["kl_coef"])
        self.generator.set_state(state["generator"])


class PPOObjective(Objective):
    """PPO makes its own optimizer steps (epochs x minibatches per rollout batch)."""

    def __init__(self, trainer, template, train, heldout, config):
        self.trainer, self.config = trainer, config
        self.module = trainer.policy
        # A prompt needs room for max_new_tokens after it.
        room = trainer.policy.gpt.config.block_size - config.ppo.max_new_tokens
        self.prompts = _unique_prompts(template, train, room)
        self.eval_prompts = _unique_prompts(template, heldout, room)
        if not self.prompts or not self.eval_prompts:
            raise FinetuneError(
                f"data: no prompt leaves room for ppo.max_new_tokens ({config.ppo.max_new_tokens}) "
                "in the training or the held-out part; lower it or use shorter prompts"
            )

    def loss(self, pick: BatchOrder) -> tuple[None, dict[str, float]]:
        size = self.config.ppo.rollout_batch_size
        prompts = [self.prompts[i] for i in pick(len(self.prompts), size)]
        return None, self.trainer.step(prompts)

    @torch.no_grad()
    def evaluate(self):
        """Mean score and KL of responses to held-out prompts, fixed sampling seed."""
        trainer, cfg = self.trainer, self.config.ppo
        count = cfg.rollout_batch_size
        prompts = [self.eval_prompts[i % len(self.eval_prompts)] for i in range(count)]
        self.module.eval()
        generator = torch.Generator(device=trainer.generator.device).manual_seed(self.config.seed)
        rollout = generate_rollouts(
            self.module, prompts, cfg, trainer.eot_id, trainer.pad_id, generator
        )
        scores = trainer.score(rollout)
        kl = (rollout.logprobs - trainer.reference_logprobs(rollout)) * rollout.response_mask
        return {"eval/reward": scores.mean().item(), "eval/kl": kl.sum(dim=1).mean().item()}

    def extra_state(self):
        return {"ppo": self.trainer.state_dict()}

    def load_extra_state(self, state):
        self.trainer.load_state_dict(state["ppo"])


def _unique_prompts(template, records: list[dict], room: int) -> list[list[int]]:
    encoded = (template.encode_prompt(p) for p in dict.fromkeys(r["prompt"] for r in records))
    return [ids for ids in encoded if len(ids) <= room]
