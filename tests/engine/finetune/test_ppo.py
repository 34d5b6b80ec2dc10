import copy

import pytest
import torch

from engine.finetune.lora import LoRAConfig, apply_lora, lora_modules
from engine.finetune.ppo import (
    AdaptiveKLController,
    PolicyWithValue,
    PPOConfig,
    PPOTrainer,
    compute_gae,
    generate_rollouts,
    left_to_right_padded,
    ppo_policy_loss,
    ppo_value_loss,
    response_logits,
    reward_model_score_fn,
    token_logprobs,
)
from engine.models.gpt import GPT, GPTConfig

VOCAB, EOT, PAD, TARGET = 8, 0, 7, 3
PROMPTS = [[1, 2, 3], [4, 5], [6], [2, 2, 2], [5, 4], [1], [3, 6, 1], [4]]
PROMPT_WIDTH = 3  # the longest prompt: rollouts left-pad every prompt to it


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=VOCAB, block_size=24, n_layer=1, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def config(**overrides) -> PPOConfig:
    base = dict(rollout_batch_size=8, minibatch_size=4, max_new_tokens=8, ppo_epochs=2)
    return PPOConfig(**{**base, **overrides})


def target_fraction(sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Score: the share of generated tokens equal to TARGET (PROMPTS pad to PROMPT_WIDTH)."""
    response, real = sequences[:, PROMPT_WIDTH:], attention_mask[:, PROMPT_WIDTH:]
    return ((response == TARGET) & real).sum(dim=1).float() / real.sum(dim=1)


def trainer_for(policy, reference, cfg, lr=1e-2, score_fn=target_fraction) -> PPOTrainer:
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    return PPOTrainer(policy, reference, score_fn, cfg, optimizer, eot_id=EOT, pad_id=PAD)


def test_rollouts_stop_at_end_of_text_and_mask_what_follows():
    policy = PolicyWithValue(tiny_gpt())
    generator = torch.Generator().manual_seed(0)
    rollout = generate_rollouts(policy, PROMPTS, config(max_new_tokens=12), EOT, PAD, generator)
    responses, mask = rollout.responses, rollout.response_mask
    assert responses.shape == mask.shape == (8, rollout.logprobs.size(1))
    stopped_early = 0
    for row in range(len(PROMPTS)):
        tokens = responses[row].tolist()
        end = tokens.index(EOT) + 1 if EOT in tokens else len(tokens)
        assert mask[row].tolist() == [True] * end + [False] * (len(tokens) - end)
        assert tokens[end:] == [PAD] * (len(tokens) - end)
        assert bool(rollout.ended[row]) == (EOT in tokens)
        assert (rollout.logprobs[row, end:] == 0).all() and (rollout.values[row, end:] == 0).all()
        stopped_early += end < 12
    assert 0 < stopped_early < len(PROMPTS)  # both kinds of row occur with this seed
    # The prompt is left-padded and marked real exactly where it has tokens.
    prompt_mask = rollout.attention_mask[:, : rollout.prompt_length]
    assert prompt_mask.sum(dim=1).tolist() == [len(p) for p in PROMPTS]


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_rollout_logprobs_and_values_from_the_kv_cache_equal_a_full_forward(style):
    llama = dict(norm="rmsnorm", position="rotary", mlp="swiglu", bias=False, tie_embeddings=False)
    policy = PolicyWithValue(tiny_gpt(**(llama if style == "llama" else {})))
    torch.nn.init.normal_(policy.value_head.weight, std=0.5)  # non-zero values to compare
    cfg = config(temperature=0.7)
    rollout = generate_rollouts(policy, PROMPTS, cfg, EOT, PAD, torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, values = response_logits(
            policy, rollout.sequences, rollout.attention_mask, rollout.prompt_length
        )
    logprobs = token_logprobs(logits, rollout.responses, cfg.temperature)
    mask = rollout.response_mask
    torch.testing.assert_close(logprobs[mask], rollout.logprobs[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(values[mask], rollout.values[mask], rtol=0, atol=1e-5)


def test_gae_matches_a_hand_computed_example():
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [2.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    # Row 0: deltas d2 = 2 - 1.5 = 0.5; d1 = 0 + 0.9 * 1.5 - 1 = 0.35; d0 = 1 + 0.9 - 0.5 = 1.4.
    a2 = 0.5
    a1 = 0.35 + 0.45 * a2
    a0 = 1.4 + 0.45 * a1
    # Row 1 ends after two tokens: its last state is terminal, the masked 9s count for nothing.
    b1 = 1.0 - 1.0
    b0 = 0.5 + 0.9 * 1.0 - 2.0 + 0.45 * b1
    expected = torch.tensor([[a0, a1, a2], [b0, b1, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, (expected + values) * mask)


def test_gae_with_lambda_one_and_zero_values_is_the_discounted_return():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    advantages, returns = compute_gae(
        rewards, torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), gamma=0.5, lam=1.0
    )
    torch.testing.assert_close(returns, torch.tensor([[0.25, 0.5, 1.0]]))


def lora_policy() -> PolicyWithValue:
    gpt = tiny_gpt()
    apply_lora(gpt, LoRAConfig(r=2, alpha=4))
    return PolicyWithValue(gpt)


@pytest.mark.parametrize("reference_kind", ["frozen copy", "adapters off"])
def test_kl_is_zero_when_policy_equals_reference(reference_kind):
    if reference_kind == "frozen copy":
        policy = PolicyWithValue(tiny_gpt())
        reference = copy.deepcopy(policy.gpt)
    else:
        policy, reference = lora_policy(), None  # B = 0 at the start: the base model itself
    metrics = trainer_for(policy, reference, config()).step(PROMPTS)
    assert metrics["ppo/kl"] == pytest.approx(0.0, abs=1e-5)


def test_reference_none_is_the_adapter_free_base_and_adapters_stay_on_for_the_policy():
    base = tiny_gpt()
    gpt = copy.deepcopy(base)
    apply_lora(gpt, LoRAConfig(r=2, alpha=4))
    policy = PolicyWithValue(gpt)
    trainer = trainer_for(policy, None, config(kl_coef=0.0))
    for _ in range(3):
        trainer.step(PROMPTS)
    cfg = trainer.config
    rollout = generate_rollouts(policy, PROMPTS, cfg, EOT, PAD, torch.Generator().manual_seed(2))
    mask = rollout.response_mask
    with torch.no_grad():
        base_logits, _ = response_logits(
            base, rollout.sequences, rollout.attention_mask, rollout.prompt_length
        )
    base_logprobs = token_logprobs(base_logits, rollout.responses, cfg.temperature)
    reference_logprobs = trainer.reference_logprobs(rollout)
    torch.testing.assert_close(reference_logprobs[mask], base_logprobs[mask], rtol=0, atol=1e-5)
    # The trained adapters moved the policy away from the base, and are on again afterwards.
    assert (rollout.logprobs - reference_logprobs)[mask].abs().max() > 1e-2
    assert not any(module.disabled for module in lora_modules(policy.gpt).values())


def test_first_update_sees_ratio_one_and_zero_approx_kl():
    # One epoch of one minibatch: the only statistics are taken before any update, so the
    # log-probs recomputed with gradients must equal those recorded in the rollout.
    policy = PolicyWithValue(tiny_gpt())
    cfg = config(ppo_epochs=1, minibatch_size=8, temperature=0.8)
    metrics = trainer_for(policy, copy.deepcopy(policy.gpt), cfg).step(PROMPTS)
    assert metrics["ppo/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["ppo/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["ppo/clipfrac"] == 0.0
    assert metrics["ppo/policy_loss"] == pytest.approx(0.0, abs=1e-5)  # whitened: mean 0


@pytest.mark.parametrize(
    ("advantage", "ratio", "expected_loss", "clipped"),
    [
        (1.0, 1.5, -1.2, True),  # good action already made more likely: capped at 1 + eps
        (1.0, 0.5, -0.5, False),  # good action made less likely: full, unclipped penalty
        (-1.0, 0.5, 0.8, True),  # bad action already made less likely: capped at 1 - eps
        (-1.0, 1.5, 1.5, False),  # bad action made more likely: full, unclipped penalty
    ],
)
def test_clipped_objective_at_the_boundaries(advantage, ratio, expected_loss, clipped):
    old = torch.zeros(1, 1)
    logprobs = torch.full((1, 1), float(torch.log(torch.tensor(ratio))), requires_grad=True)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = ppo_policy_loss(logprobs, old, torch.full((1, 1), advantage), mask, 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(expected_loss)
    assert stats["clipfrac"].item() == float(clipped)
    # Past the clip the objective is flat: no gradient pushes the ratio further.
    assert (logprobs.grad.abs().item() == 0.0) == clipped


def test_value_loss_is_clipped_around_the_old_values():
    old, returns = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[0.5, 2.0]], requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    loss.backward()
    # Token 0: clipped to 0.2 -> error 0.64 beats 0.25, and is flat in the value.
    # Token 1: clipped to 0.2 -> 0.64 vs unclipped 1.0: the unclipped error counts.
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert values.grad[0, 0].item() == 0.0 and values.grad[0, 1].item() == pytest.approx(0.5)
    assert stats["value_clipfrac"].item() == 0.5


def test_ppo_raises_the_mean_reward_while_kl_stays_finite():
    policy = PolicyWithValue(tiny_gpt())
    cfg = config(kl_coef=0.02, ppo_epochs=4)
    trainer = trainer_for(policy, copy.deepcopy(policy.gpt), cfg, lr=1e-2)
    history = [trainer.step(PROMPTS) for _ in range(15)]
    rewards = [m["ppo/reward"] for m in history]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards
    kls = [m["ppo/kl"] for m in history]
    assert all(0.0 <= kl < 50.0 for kl in kls), kls  # finite and bounded by the penalty
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in history)


def test_adaptive_controller_raises_the_coefficient_above_target_and_lowers_it_below():
    controller = AdaptiveKLController(0.1, target=1.0, horizon=10000)
    controller.update(current_kl=2.0, episodes=1000)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    controller.value = 0.1
    controller.update(current_kl=0.9, episodes=1000)  # error -0.1
    assert controller.value == pytest.approx(0.1 * (1 - 0.1 * 0.1))


def test_state_dict_restores_the_kl_coefficient_and_the_sampler():
    policy = PolicyWithValue(tiny_gpt())
    reference = copy.deepcopy(policy.gpt)
    cfg = config(target_kl=0.01, kl_horizon=8, kl_coef=0.1)
    trainer = trainer_for(policy, reference, cfg)
    trainer.step(PROMPTS)
    state = copy.deepcopy(trainer.state_dict())
    weights = copy.deepcopy(policy.state_dict())
    assert state["kl_coef"] != 0.1 and state["steps"] == 1
    expected = trainer.step(PROMPTS)
    resumed_policy = PolicyWithValue(tiny_gpt())
    resumed_policy.load_state_dict(weights)
    resumed = trainer_for(resumed_policy, reference, cfg, lr=1e-2)
    resumed.load_state_dict(state)
    # Fresh optimizer moments, so compare what the rollout and the controller decide.
    got = resumed.step(PROMPTS)
    for key in ("ppo/kl_coef", "ppo/reward", "ppo/kl", "ppo/response_length"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clip_range", 0.0),
        ("lam", 1.5),
        ("gamma", 0.0),
        ("temperature", 0.0),
        ("kl_coef", -0.1),
        ("target_kl", 0.0),
        ("ppo_epochs", 0),
        ("minibatch_size", 16),
        ("minibatch_size", 3),
        ("top_k", 0),
    ],
)
def test_bad_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"ppo.{field}"):
        config(**{field: value})


def test_a_prompt_longer_than_the_context_names_the_prompt():
    policy = PolicyWithValue(tiny_gpt())
    prompts = [[1], [2] * 20]
    with pytest.raises(ValueError, match="prompt 1: 20 tokens"):
        generate_rollouts(policy, prompts, config(max_new_tokens=8), EOT, PAD)


def test_reference_none_without_adapters_is_refused():
    with pytest.raises(ValueError, match="no adapters"):
        trainer_for(PolicyWithValue(tiny_gpt()), None, config())


def test_score_fn_of_the_wrong_shape_is_refused():
    policy = PolicyWithValue(tiny_gpt())
    trainer = trainer_for(
        policy, copy.deepcopy(policy.gpt), config(), score_fn=lambda s, m: torch.zeros(len(s), 1)
    )
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        trainer.step(PROMPTS)


def test_missing_eot_penalty_replaces_the_score_of_responses_that_never_end():
    policy = PolicyWithValue(tiny_gpt())
    cfg = config(missing_eot_penalty=-1.0, max_new_tokens=3)
    trainer = trainer_for(policy, copy.deepcopy(policy.gpt), cfg, score_fn=lambda s, m: m.sum(1))
    rollout = generate_rollouts(policy, PROMPTS, cfg, EOT, PAD, torch.Generator().manual_seed(0))
    scores = trainer.score(rollout)
    real = rollout.attention_mask.sum(1).float()
    torch.testing.assert_close(scores, torch.where(rollout.ended, real, -1.0))
    assert not rollout.ended.all()


def test_reward_model_score_fn_reads_right_padded_rows():
    sequences = torch.tensor([[PAD, 1, 2, 5, PAD], [3, 4, 6, 0, 2]])
    mask = torch.tensor([[False, True, True, True, False], [True, True, True, True, True]])
    ids, lengths = left_to_right_padded(sequences, mask, PAD)
    assert ids.tolist() == [[1, 2, 5, PAD, PAD], [3, 4, 6, 0, 2]]
    assert lengths.tolist() == [3, 5]
    last_token = reward_model_score_fn(lambda ids, n: ids[torch.arange(2), n - 1].float(), PAD)
    assert last_token(sequences, mask).tolist() == [5.0, 2.0]
