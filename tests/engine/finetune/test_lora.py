import pytest
import torch
from safetensors.torch import load_file

from engine.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
    set_adapters_enabled,
    trainable_parameters,
    unmerge_lora,
)
from engine.models.gpt import GPT, GPTConfig


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=48, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 48, (2, 16), generator=torch.Generator().manual_seed(seed))


def perturb_adapters(model: GPT) -> None:
    """Training moves B off zero; do that directly so the adapters change the outputs."""
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.normal_(0, 0.05)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_step_zero_equals_the_base_model(style):
    llama = dict(norm="rmsnorm", position="rotary", mlp="swiglu", bias=False, tie_embeddings=False)
    base = tiny_gpt(**(llama if style == "llama" else {}))
    expected, _ = base(tokens())
    targets = ["*.attn.*", "*.mlp.*"]  # every projection, c_gate included under SwiGLU
    apply_lora(base, LoRAConfig(r=4, alpha=8, dropout=0.1, target_modules=targets))
    got, _ = base(tokens())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_default_targets_cover_attention_and_mlp_projections():
    model = tiny_gpt()
    names = apply_lora(model, LoRAConfig(r=2))
    assert len(names) == 2 * 4
    assert "transformer.h.1.mlp.c_fc" in names and "transformer.h.0.attn.c_attn" in names
    assert isinstance(model.transformer.h[0].attn.c_proj, LoRALinear)


def test_only_adapter_parameters_get_gradients():
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    perturb_adapters(model)
    _, loss = model(tokens(), tokens(2))
    loss.backward()
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0
        else:
            assert not param.requires_grad and param.grad is None, name
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < 0.2 * total


def test_merge_and_unmerge_round_trip():
    model = tiny_gpt()
    base_weight = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    perturb_adapters(model)
    adapted, _ = model(tokens())
    merge_lora(model)
    merged, _ = model(tokens())
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, base_weight)
    unmerge_lora(model)
    torch.testing.assert_close(model.transformer.h[0].mlp.c_fc.weight, base_weight)
    torch.testing.assert_close(model(tokens())[0], adapted, rtol=1e-5, atol=1e-5)


def test_disabled_adapters_give_the_base_model_merged_or_not():
    model = tiny_gpt()
    expected, _ = model(tokens())
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    perturb_adapters(model)
    set_adapters_enabled(model, False)
    torch.testing.assert_close(model(tokens())[0], expected)
    merge_lora(model)
    torch.testing.assert_close(model(tokens())[0], expected, rtol=1e-5, atol=1e-5)


def test_adapter_save_and_load_round_trip(tmp_path):
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=["*.attn.c_attn", "*.mlp.c_fc"]))
    perturb_adapters(model)
    expected, _ = model(tokens())
    save_adapter(model, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert files == {"adapter.safetensors", "adapter.json"}
    saved = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    assert len(saved) == 2 * 4 and all(".lora_" in key for key in saved)  # no base weights

    fresh = tiny_gpt()  # same seed: the same base weights, no adapters
    assert not torch.allclose(fresh(tokens())[0], expected)
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(fresh(tokens())[0], expected)
    assert len(lora_modules(fresh)) == 4


def test_target_matching_no_module_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"\*\.attn\.q_proj"):
        apply_lora(tiny_gpt(), LoRAConfig(target_modules=["*.attn.q_proj"]))


def test_adapter_for_another_base_model_is_refused(tmp_path):
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(r=2))
    save_adapter(model, tmp_path / "adapter")
    wider = tiny_gpt(n_embd=64)
    with pytest.raises(ValueError, match="another base model: module 'transformer.h.0"):
        load_adapter(wider, tmp_path / "adapter")
