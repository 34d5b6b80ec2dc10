import json
import math

import pytest
import torch

from engine.data.tokenizers import CharTokenizer, load_tokenizer
from engine.finetune.lora import LoRAConfig, apply_lora, lora_modules, trainable_parameters
from engine.finetune.preference import preference_batches
from engine.finetune.reward import (
    RewardModel,
    bradley_terry_loss,
    evaluate_reward_model,
    load_reward_model,
    pair_rewards,
    reward_train,
    save_reward_model,
)
from engine.finetune.sft import ChatTemplate
from tests.engine.finetune.toy_preferences import tiny_gpt, toy_pairs, toy_tokenizer


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return toy_tokenizer()


@pytest.fixture
def template(tokenizer) -> ChatTemplate:
    return ChatTemplate(tokenizer)


def test_reward_is_read_at_the_last_real_token(template, tokenizer):
    model = RewardModel.from_gpt(tiny_gpt(tokenizer.vocab_size)).eval()
    short = template.encode({"prompt": "ab", "response": "c"}).ids
    long = template.encode({"prompt": "abcd", "response": "efgh"}).ids
    padded = torch.full((2, len(long)), template.pad_id)
    padded[0, : len(short)] = torch.tensor(short)
    padded[1] = torch.tensor(long)
    lengths = torch.tensor([len(short), len(long)])
    with torch.no_grad():
        scores = model(padded, lengths)
        alone = model(torch.tensor([short]), torch.tensor([len(short)]))
        torch.testing.assert_close(scores[0], alone[0])
        # Whatever fills the padding, the score stays.
        padded[0, len(short) :] = tokenizer.encode("p")[0]
        torch.testing.assert_close(model(padded, lengths), scores)
        # The last real token does count.
        padded[0, len(short) - 2] = tokenizer.encode("p")[0]
        assert model(padded, lengths)[0] != scores[0]
    with pytest.raises(ValueError, match="lengths must lie in"):
        model(padded, torch.tensor([0, len(long)]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        model(padded, torch.tensor([3]))


def test_bradley_terry_loss_and_accuracy():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    # -log sigmoid(x) = log(1 + exp(-x)); margins 2 and -1.
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2)
    assert metrics["reward/accuracy"] == 0.5
    assert metrics["reward/margin"] == pytest.approx(0.5)
    assert metrics["reward/chosen"] == pytest.approx(1.0)
    assert metrics["reward/rejected"] == pytest.approx(0.5)
    equal, _ = bradley_terry_loss(torch.ones(3), torch.ones(3))
    assert equal.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="two \\(B,\\) tensors"):
        bradley_terry_loss(torch.ones(3), torch.ones(2))


def test_tiny_reward_training_separates_chosen_from_rejected(template, tokenizer):
    source = tiny_gpt(tokenizer.vocab_size)
    source_weights = {k: v.clone() for k, v in source.state_dict().items()}
    model = RewardModel.from_gpt(source)
    train = preference_batches(template, toy_pairs(32, seed=1), batch_size=8, block_size=16)
    heldout = preference_batches(template, toy_pairs(32, seed=2), batch_size=16, block_size=16)
    before = evaluate_reward_model(model, heldout)
    history = reward_train(model, train, steps=40, lr=3e-3)
    after = evaluate_reward_model(model, heldout)
    assert after["accuracy"] >= 0.9 > before["accuracy"]
    assert after["margin"] > 1.0
    assert history[-1]["reward/loss"] < history[0]["reward/loss"]
    # from_gpt trained a copy: the source model is untouched.
    for key, value in source.state_dict().items():
        torch.testing.assert_close(value, source_weights[key])


def test_save_load_round_trip_gives_identical_scores(template, tokenizer, tmp_path):
    model = RewardModel.from_gpt(tiny_gpt(tokenizer.vocab_size))
    torch.manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    tokenizer_file = tokenizer.save(tmp_path / "tok.json")
    save_reward_model(model, tmp_path / "rm", tokenizer_file=tokenizer_file)
    loaded = load_reward_model(tmp_path / "rm")
    (batch,) = preference_batches(template, toy_pairs(4, seed=0), batch_size=4, block_size=16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            loaded(batch.input_ids, batch.lengths), model(batch.input_ids, batch.lengths)
        )
    assert load_tokenizer(tmp_path / "rm").encode("abc") == tokenizer.encode("abc")
    manifest = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert manifest["format"] == "engine.reward-model/1" and manifest["model"]["n_embd"] == 32
    # The output head stays tied to the embedding after loading.
    assert loaded.gpt.lm_head.weight is loaded.gpt.transformer.wte.weight


def test_lora_reward_model_trains_adapters_and_head_and_saves_merged(template, tokenizer, tmp_path):
    model = RewardModel.from_gpt(tiny_gpt(tokenizer.vocab_size))
    apply_lora(model.gpt, LoRAConfig(r=2, alpha=4))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("score.") for name in trainable)
    assert {"score.weight", "score.bias"} <= trainable
    assert trainable_parameters(model)[0] < trainable_parameters(model)[1] / 5
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".base." in k}
    train = preference_batches(template, toy_pairs(16, seed=1), batch_size=8, block_size=16)
    reward_train(model, train, steps=5, lr=1e-2)
    for key, value in frozen.items():
        torch.testing.assert_close(model.state_dict()[key], value)

    save_reward_model(model, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert not lora_modules(loaded)  # a plain GPT backbone with the adapters folded in
    assert lora_modules(model) and not any(m.merged for m in lora_modules(model).values())
    model.eval()
    with torch.no_grad():
        expected = torch.cat(pair_rewards(model, train[0]))
        torch.testing.assert_close(torch.cat(pair_rewards(loaded, train[0])), expected)


def test_loading_something_else_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reward model"):
        load_reward_model(tmp_path)
    (tmp_path / "reward_model.json").write_text(json.dumps({"format": "engine.lora-adapter/1"}))
    with pytest.raises(ValueError, match="is not a reward model"):
        load_reward_model(tmp_path)
