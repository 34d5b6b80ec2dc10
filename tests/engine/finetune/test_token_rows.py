"""Trainable token rows: new special tokens learn beside the LoRA adapters, and merge exactly."""

import pytest
import torch

from engine.finetune.lora import (
    LoRAConfig,
    apply_lora,
    load_adapter,
    merge_and_unload,
    merge_lora,
    save_adapter,
    set_adapters_enabled,
    trainable_parameters,
    unmerge_lora,
)
from engine.models.gpt import GPT, GPTConfig

NEW_TOKENS = [1, 2]  # e.g. <|user|>, <|assistant|>


def tiny(tied: bool = True) -> GPT:
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_embeddings=tied)
    )


def adapted(tied: bool = True) -> GPT:
    model = tiny(tied)
    apply_lora(model, LoRAConfig(r=2, alpha=4, trainable_tokens=NEW_TOKENS))
    with torch.no_grad():  # as if trained
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    return model


IDS = torch.tensor([[1, 5, 2, 7, 1, 3]])


def test_step_zero_equals_the_base_and_only_new_rows_and_adapters_train():
    base = tiny()
    model = tiny()
    apply_lora(model, LoRAConfig(r=2, alpha=4, trainable_tokens=NEW_TOKENS))
    torch.testing.assert_close(model(IDS)[0], base(IDS)[0])
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert "transformer.wte.rows.delta" in names
    assert all("lora_" in n or "rows.delta" in n for n in names)
    trainable, _ = trainable_parameters(model)
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainable == lora_params + len(NEW_TOKENS) * 8  # one delta, shared by the tied head


def test_the_delta_learns_from_both_the_input_and_the_output_side():
    model = tiny()
    apply_lora(model, LoRAConfig(r=2, alpha=4, trainable_tokens=NEW_TOKENS))
    _, loss = model(IDS[:, :-1], IDS[:, 1:])
    loss.backward()
    delta = model.transformer.wte.rows.delta
    assert delta.grad is not None and delta.grad.abs().sum() > 0


@pytest.mark.parametrize("tied", [True, False])
def test_merged_model_gives_the_unmerged_outputs_and_unmerge_restores(tied):
    model = adapted(tied)
    expected = model(IDS)[0]
    merge_lora(model)
    torch.testing.assert_close(model(IDS)[0], expected)
    set_adapters_enabled(model, False)
    torch.testing.assert_close(model(IDS)[0], tiny(tied)(IDS)[0], atol=1e-5, rtol=1e-5)
    set_adapters_enabled(model, True)
    unmerge_lora(model)
    torch.testing.assert_close(model(IDS)[0], expected)
    plain = merge_and_unload(model)
    torch.testing.assert_close(plain(IDS)[0], expected)
    assert type(plain.transformer.wte) is torch.nn.Embedding
    if tied:
        assert plain.lm_head.weight is plain.transformer.wte.weight


def test_adapters_switched_off_give_the_base():
    model = adapted()
    set_adapters_enabled(model, False)
    torch.testing.assert_close(model(IDS)[0], tiny()(IDS)[0])


def test_saved_adapter_carries_the_token_rows(tmp_path):
    model = adapted()
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny(), tmp_path)
    torch.testing.assert_close(loaded(IDS)[0], model(IDS)[0])


def test_token_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"\[99\] are outside the vocabulary of 16"):
        apply_lora(tiny(), LoRAConfig(trainable_tokens=[1, 99]))
