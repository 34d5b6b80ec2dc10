import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.data.tokenizers import CharTokenizer
from engine.finetune.dpo import (
    dpo_batch_loss,
    dpo_loss,
    dpo_train,
    evaluate_preferences,
    precompute_reference_logps,
    reference_logps,
)
from engine.finetune.lora import LoRAConfig, apply_lora, lora_modules
from engine.finetune.preference import (
    collate_preferences,
    encode_preference,
    preference_batches,
    sequence_logps,
)
from engine.finetune.sft import ChatTemplate
from tests.engine.finetune.toy_preferences import tiny_gpt, toy_pairs, toy_tokenizer


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return toy_tokenizer()


@pytest.fixture
def template(tokenizer) -> ChatTemplate:
    return ChatTemplate(tokenizer)


def frozen_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).requires_grad_(False).eval()


def perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every trainable weight a little, so the policy differs from its start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def test_dpo_loss_is_log2_when_policy_equals_reference(template, tokenizer):
    policy = tiny_gpt(tokenizer.vocab_size)
    batch = preference_batches(template, toy_pairs(4, seed=0), batch_size=4, block_size=16)[0]
    loss, metrics = dpo_batch_loss(policy, frozen_copy(policy), batch, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["dpo/margin"] == pytest.approx(0.0, abs=1e-6)
    # No preference yet: the implicit reward ties on every pair, which counts as chance.
    assert metrics["dpo/accuracy"] == 0.5
    assert metrics["dpo/logps_chosen"] < 0


def test_dpo_gradient_pushes_chosen_up_and_rejected_down(template, tokenizer):
    logps = torch.tensor([-5.0, -7.0, -6.0, -6.0], requires_grad=True)
    chosen, rejected = logps[:2], logps[2:]
    loss, _ = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.5)
    loss.backward()
    # At h = 0, d loss / d log pi(y_c) = -beta * sigmoid(0) / B, and the opposite for y_r.
    torch.testing.assert_close(logps.grad, torch.tensor([-0.125, -0.125, 0.125, 0.125]))

    # On a model: one small gradient step widens the policy's chosen - rejected margin.
    policy = tiny_gpt(tokenizer.vocab_size)
    reference = frozen_copy(policy)
    batch = preference_batches(template, toy_pairs(4, seed=0), batch_size=4, block_size=16)[0]
    before = evaluate_preferences(policy, reference, [batch], beta=0.1)
    loss, _ = dpo_batch_loss(policy, reference, batch, beta=0.1)
    loss.backward()
    with torch.no_grad():
        for param in policy.parameters():
            param -= 1.0 * param.grad
    after = evaluate_preferences(policy, reference, [batch], beta=0.1)
    assert after["logp_margin"] > before["logp_margin"]
    assert after["margin"] > 0 and after["loss"] < math.log(2)


def test_label_smoothing_mixes_both_directions_as_the_formula_says():
    h = torch.tensor([2.0, -1.0])  # (pi_c - ref_c) - (pi_r - ref_r), one value per pair
    zero = torch.zeros(2)
    beta, eps = 1.0, 0.2
    plain, _ = dpo_loss(h, zero, zero, zero, beta=beta)
    smoothed, _ = dpo_loss(h, zero, zero, zero, beta=beta, label_smoothing=eps)
    # -log sigmoid(x) = log(1 + exp(-x))
    expected_plain = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    flipped = (math.log1p(math.exp(2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert plain.item() == pytest.approx(expected_plain, rel=1e-6)
    assert smoothed.item() == pytest.approx((1 - eps) * expected_plain + eps * flipped, rel=1e-6)
    # A pair already ranked far apart keeps a pull back towards the middle: the loss is
    # minimal at a finite margin instead of at infinity.
    far = torch.tensor([50.0], requires_grad=True)
    loss, _ = dpo_loss(
        far, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1, label_smoothing=eps
    )
    loss.backward()
    assert far.grad.item() == pytest.approx(eps, rel=1e-4)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(h, zero, zero, zero, beta=beta, label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(h, zero, zero, zero, beta=0.0)


def test_reference_none_is_the_adapter_free_base_and_equals_a_frozen_copy(template, tokenizer):
    base = tiny_gpt(tokenizer.vocab_size)
    start = frozen_copy(base)
    policy = base
    apply_lora(policy, LoRAConfig(r=2, alpha=4))
    perturb(policy)  # the adapters now change the outputs
    batch = preference_batches(template, toy_pairs(3, seed=0), batch_size=3, block_size=16)[0]
    with torch.no_grad():
        own_before = sequence_logps(policy, batch.input_ids, batch.loss_mask)

    ref_chosen, ref_rejected = reference_logps(policy, None, batch)
    copy_chosen, copy_rejected = reference_logps(policy, start, batch)
    torch.testing.assert_close(ref_chosen, copy_chosen)
    torch.testing.assert_close(ref_rejected, copy_rejected)
    assert not ref_chosen.requires_grad
    # The adapters are back on afterwards, and they did make a difference.
    assert all(not m.disabled for m in lora_modules(policy).values())
    with torch.no_grad():
        own_after = sequence_logps(policy, batch.input_ids, batch.loss_mask)
    torch.testing.assert_close(own_after, own_before)
    assert not torch.allclose(own_after, torch.cat([ref_chosen, ref_rejected]))

    with pytest.raises(ValueError, match="no LoRA adapters"):
        reference_logps(tiny_gpt(tokenizer.vocab_size), None, batch)


def test_precomputed_reference_logps_give_the_same_loss_without_a_reference(template, tokenizer):
    policy = tiny_gpt(tokenizer.vocab_size)
    reference = frozen_copy(policy)
    batches = preference_batches(template, toy_pairs(6, seed=0), batch_size=3, block_size=16)
    precomputed = precompute_reference_logps(policy, reference, batches)
    perturb(policy)
    for live, stored in zip(batches, precomputed, strict=True):
        expected, _ = dpo_batch_loss(policy, reference, live, beta=0.1)
        # reference=None on a policy without adapters would raise: no reference forward runs.
        loss, _ = dpo_batch_loss(policy, None, stored, beta=0.1)
        torch.testing.assert_close(loss, expected)
    assert evaluate_preferences(policy, None, precomputed, beta=0.1) == evaluate_preferences(
        policy, reference, batches, beta=0.1
    )


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits  # (N, T, V)

    def forward(self, idx):
        return self.logits[:, : idx.size(1)], None


def test_sequence_logps_counts_only_response_tokens(template, tokenizer):
    record = {"prompt": "abc", "chosen": "de", "rejected": "ijkl"}
    batch = collate_preferences([encode_preference(template, record)], template.pad_id, 16)
    assert batch.input_ids.shape == (2, 10)  # <|user|>abc<|assistant|>ijkl<|endoftext|>
    scored = batch.input_ids[:, 1:][batch.loss_mask]
    assert tokenizer.decode(scored.tolist()) == "de<|endoftext|>ijkl<|endoftext|>"
    assert batch.lengths.tolist() == [8, 10]

    torch.manual_seed(0)
    logits = torch.randn(2, 9, tokenizer.vocab_size)
    logps = sequence_logps(FixedLogits(logits), batch.input_ids, batch.loss_mask)
    targets = batch.input_ids[:, 1:]
    by_hand = F.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(logps, (by_hand * batch.loss_mask).sum(-1))

    # Prompt and padding positions are not scored, whatever the model says there.
    unscored = logits.clone()
    unscored[~batch.loss_mask] += 100 * torch.randn(int((~batch.loss_mask).sum()), logits.size(-1))
    unscored[0, -1] = float("-inf")  # predicts the padding after the shorter row
    unscored[0, 0] = float("nan")  # predicts a prompt token
    torch.testing.assert_close(
        sequence_logps(FixedLogits(unscored), batch.input_ids, batch.loss_mask), logps
    )
    # A response position is scored.
    logits[0, 5] += 10 * torch.randn(logits.size(-1))
    assert sequence_logps(FixedLogits(logits), batch.input_ids, batch.loss_mask)[0] != logps[0]


def test_pair_batch_puts_chosen_rows_first_and_pads_on_the_right(template, tokenizer):
    records = [
        {"prompt": "ab", "chosen": "c", "rejected": "ij"},
        {"prompt": "a", "chosen": "def", "rejected": "k"},
    ]
    batches = preference_batches(template, records, batch_size=2, block_size=16)
    (batch,) = batches
    assert batch.indices == [0, 1]
    rows = [
        tokenizer.decode(row[:n].tolist())
        for row, n in zip(batch.input_ids, batch.lengths, strict=True)
    ]
    assert [r.split("<|assistant|>")[1] for r in rows] == [
        "c<|endoftext|>",
        "def<|endoftext|>",
        "ij<|endoftext|>",
        "k<|endoftext|>",
    ]
    assert (batch.input_ids[0, batch.lengths[0] :] == template.pad_id).all()


def test_bad_preference_records_are_named(template):
    records = toy_pairs(3, seed=0)
    del records[1]["rejected"]
    with pytest.raises(ValueError, match="record 1: missing or empty field 'rejected'"):
        preference_batches(template, records, batch_size=2, block_size=16)
    records = toy_pairs(3, seed=0)
    records[2]["chosen"] = "abcdefgh" * 2
    with pytest.raises(
        ValueError, match=r"record 2: 22 tokens .* do not fit the context \(block_size 16\)"
    ):
        preference_batches(template, records, batch_size=2, block_size=16)
    records[2]["chosen"] = 3
    with pytest.raises(ValueError, match="record 2: missing or empty field 'chosen'"):
        preference_batches(template, records, batch_size=2, block_size=16)


def test_dpo_refuses_a_reference_that_shares_the_policys_weights(template, tokenizer):
    policy = tiny_gpt(tokenizer.vocab_size)
    batches = preference_batches(template, toy_pairs(2, seed=0), batch_size=2, block_size=16)
    with pytest.raises(ValueError, match="shares trainable parameters"):
        dpo_train(policy, policy, batches, steps=1)


@pytest.mark.parametrize("use_lora", [False, True])
def test_tiny_dpo_run_raises_heldout_preference_accuracy(template, tokenizer, use_lora):
    policy = tiny_gpt(tokenizer.vocab_size)
    if use_lora:
        apply_lora(policy, LoRAConfig(r=4, alpha=8))
        reference, lr = None, 2e-2
    else:
        reference, lr = frozen_copy(policy), 3e-3
    train = preference_batches(template, toy_pairs(32, seed=1), batch_size=8, block_size=16)
    heldout = preference_batches(template, toy_pairs(32, seed=2), batch_size=16, block_size=16)
    before = evaluate_preferences(policy, reference, heldout, beta=0.1)
    history = dpo_train(policy, reference, train, steps=60, beta=0.1, lr=lr)
    after = evaluate_preferences(policy, reference, heldout, beta=0.1)
    assert before["accuracy"] == 0.5
    assert after["accuracy"] >= 0.9
    assert after["logp_margin"] > before["logp_margin"] + 1.0
    assert history[-1]["dpo/loss"] < history[0]["dpo/loss"]
