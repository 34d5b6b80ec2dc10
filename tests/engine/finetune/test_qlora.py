import pytest
import torch
import torch.nn as nn

from engine.finetune.lora import (
    LoRAConfig,
    apply_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
    set_adapters_enabled,
)
from engine.finetune.qlora import (
    NF4_LEVELS,
    NF4Linear,
    dequantize_model,
    dequantize_nf4,
    nf4_max_half_gap,
    pack_4bit,
    quantize_model,
    quantize_nf4,
    unpack_4bit,
    weight_bytes,
)
from engine.models.gpt import GPT, GPTConfig

# QLoRA appendix E / bitsandbytes' NF4 code, typed in from the paper.
PUBLISHED_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=48, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 48, (4, 16), generator=torch.Generator().manual_seed(seed))


def heavy_tailed(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with a few large outliers, as trained transformers have."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen) * 0.02
    outliers = torch.rand(rows, cols, generator=gen) < 0.002
    return torch.where(outliers, weight * 20, weight)


def test_nf4_table_is_the_published_one():
    assert list(NF4_LEVELS) == PUBLISHED_NF4
    # And it is what the paper says it is: N(0, 1) quantiles, 8 positive / 7 negative plus
    # an exact zero, normalised to [-1, 1] (bitsandbytes' create_normal_map, offset 0.9677083).
    p = torch.linspace(0.9677083, 0.5, 9, dtype=torch.float64)
    positive = torch.special.ndtri(p[:-1])
    negative = -torch.special.ndtri(torch.linspace(0.9677083, 0.5, 8, dtype=torch.float64)[:-1])
    derived = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    derived = derived / derived.max()
    torch.testing.assert_close(
        derived, torch.tensor(PUBLISHED_NF4, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("double_quant", [True, False])
def test_round_trip_error_of_every_element_is_within_the_per_block_bound(double_quant):
    # 300 x 70: not a multiple of 64 (the last block is padded) and 329 blocks, two groups
    # of 256 for the double quantisation.
    weight = heavy_tailed(300, 70)
    q = quantize_nf4(weight, double_quant=double_quant)
    error = (dequantize_nf4(q) - weight).abs().view(-1)  # (N,)
    absmax = torch.nn.functional.pad(weight.abs().view(-1), (0, 329 * 64 - 21000))
    absmax = absmax.view(329, 64).amax(dim=1)  # the exact per-block absmax a
    # |w - L â| <= a * D/2 + |a - â|, with |a - â| <= half an int8 step (qlora.py docstring).
    bound = absmax * nf4_max_half_gap() + q.scale_error_bound()  # (blocks,)
    bound = bound.repeat_interleave(64)[: weight.numel()] * (1 + 1e-5)  # fp32 rounding
    assert (error <= bound).all(), float((error / bound).max())
    # The bound is not vacuous: some element comes close to it.
    assert (error / bound).max() > 0.5
    scale_error = (q.scales() - absmax).abs()
    assert (scale_error <= q.scale_error_bound() * (1 + 1e-4) + 1e-9).all()
    if not double_quant:
        assert torch.equal(q.scales(), absmax)


def test_exact_zeros_stay_zero():
    weight = heavy_tailed(8, 128)
    weight[0] = 0.0  # two whole blocks of zeros (absmax 0)
    weight[3, ::3] = 0.0  # zeros among non-zero values
    for double_quant in (True, False):
        restored = dequantize_nf4(quantize_nf4(weight, double_quant=double_quant))
        assert torch.equal(restored[weight == 0], torch.zeros(int((weight == 0).sum())))
        assert (restored[weight != 0] != 0).float().mean() > 0.5  # nonzeros mostly survive


def test_packing_round_trips_two_codes_per_byte_first_in_the_high_nibble():
    codes = torch.randint(0, 16, (1000,), dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 500
    assert torch.equal(unpack_4bit(packed), codes)
    assert pack_4bit(torch.tensor([0x3, 0xC], dtype=torch.uint8)).item() == 0x3C
    q = quantize_nf4(heavy_tailed(64, 64))
    assert q.packed.numel() == 64 * 64 // 2


def test_nf4_linear_output_is_close_to_the_fp32_linear():
    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    layer = NF4Linear.from_linear(linear, compute_dtype=torch.float32)
    x = torch.randn(4, 10, 128)
    expected, got = linear(x), layer(x)
    # Exactly a Linear with the dequantised weight ...
    torch.testing.assert_close(got, nn.functional.linear(x, layer.weight, linear.bias))
    # ... and close to the original: NF4 keeps ~10% relative error per weight.
    relative = (got - expected).norm() / expected.norm()
    assert relative < 0.12, float(relative)
    bf16 = NF4Linear.from_linear(linear, compute_dtype=torch.bfloat16)
    out = bf16(x)
    assert out.dtype == torch.float32  # cast back to the input's dtype
    assert (out - got).norm() / got.norm() < 0.02


def test_nf4_linear_backward_gives_the_input_gradient_of_the_dequantised_linear():
    torch.manual_seed(0)
    layer = NF4Linear.from_linear(nn.Linear(64, 32), compute_dtype=torch.float32)
    x = torch.randn(3, 64, requires_grad=True)
    layer(x).square().sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    nn.functional.linear(reference, layer.weight, layer.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_nf4_linear_is_frozen_state_and_its_state_dict_round_trips():
    torch.manual_seed(0)
    layer = NF4Linear.from_linear(nn.Linear(64, 48), compute_dtype=torch.float32)
    assert list(layer.parameters()) == []
    state = layer.state_dict()
    assert state["weight_packed"].dtype == torch.uint8
    assert state["weight_absmax"].dtype == torch.int8  # double-quantised scales
    fresh = NF4Linear(64, 48, compute_dtype=torch.float32)
    fresh.load_state_dict(state)
    x = torch.randn(2, 64)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    # Casting the module must not round the fp32 scales (that would change the weights).
    before = layer.weight
    layer.to(torch.bfloat16)
    assert layer.weight_absmax_scale.dtype == torch.float32
    torch.testing.assert_close(layer.weight, before, rtol=0, atol=0)


def test_quantize_model_by_default_takes_the_block_linears_and_keeps_the_tied_head():
    model = tiny_gpt()
    names = quantize_model(model, compute_dtype=torch.float32)
    assert len(names) == 2 * 4 and "transformer.h.1.mlp.c_proj" in names
    assert isinstance(model.transformer.h[0].attn.c_attn, NF4Linear)
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.transformer.wte.weight


def test_a_quantize_target_matching_no_module_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"\*\.attn\.q_proj"):
        quantize_model(tiny_gpt(), ["transformer.h.*", "*.attn.q_proj"])


def test_quantizing_the_tied_head_is_refused_by_name():
    with pytest.raises(ValueError, match="'lm_head'.*tied to.*transformer.wte.weight"):
        quantize_model(tiny_gpt(), ["lm_head"])


def qlora_model(compute_dtype=torch.float32, seed: int = 0) -> GPT:
    model = tiny_gpt(seed)
    quantize_model(model, compute_dtype=compute_dtype)
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    return model


def test_qlora_at_step_zero_equals_the_quantized_base():
    model = tiny_gpt()
    quantize_model(model, compute_dtype=torch.float32)
    expected, _ = model(tokens())
    names = apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.1))
    assert len(names) == 8 and all(
        isinstance(m.base, NF4Linear) for m in lora_modules(model).values()
    )
    module = lora_modules(model)["transformer.h.0.mlp.c_fc"]
    assert module.lora_A.dtype == torch.float32 and module.lora_B.dtype == torch.float32
    torch.testing.assert_close(model(tokens())[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_qlora_trains_only_the_adapters_and_leaves_the_4bit_codes_unchanged(compute_dtype):
    model = qlora_model(compute_dtype)
    model.train()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == compute_dtype for p in adapters) and len(adapters) == 16
    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    x, y = tokens(1), tokens(2)
    losses = []
    for _ in range(15):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    for name, param in model.named_parameters():
        assert (param.grad is not None) == ("lora_" in name), name
    for key, before in frozen.items():
        assert torch.equal(model.state_dict()[key], before), key


def test_adapters_save_and_load_on_the_quantized_model(tmp_path):
    model = qlora_model()
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.normal_(0, 0.05)
    expected, _ = model(tokens())
    save_adapter(model, tmp_path / "adapter")

    fresh = tiny_gpt()  # the same base weights, quantised the same way
    quantize_model(fresh, compute_dtype=torch.float32)
    assert not torch.allclose(fresh(tokens())[0], expected)
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(fresh(tokens())[0], expected, rtol=0, atol=0)
    set_adapters_enabled(fresh, False)
    assert not torch.allclose(fresh(tokens())[0], expected)


def test_merging_into_a_4bit_base_is_refused_and_works_after_dequantize_model():
    model = qlora_model()
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.normal_(0, 0.05)
    adapted, _ = model(tokens())
    with pytest.raises(ValueError, match="'transformer.h.0.attn.c_attn'.*dequantize_model"):
        merge_lora(model)
    assert not any(m.merged for m in lora_modules(model).values())  # nothing half-merged

    names = dequantize_model(model)
    assert "transformer.h.0.attn.c_attn.base" in names
    assert type(model.transformer.h[0].attn.c_attn.base) is nn.Linear
    torch.testing.assert_close(model(tokens())[0], adapted, rtol=1e-6, atol=1e-6)
    merge_lora(model)
    torch.testing.assert_close(model(tokens())[0], adapted, rtol=1e-5, atol=1e-5)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_dequantize_model_gives_linears_with_the_dequantized_weights():
    model = tiny_gpt()
    quantize_model(model, compute_dtype=torch.float32)
    expected, _ = model(tokens())
    weight = model.transformer.h[1].mlp.c_fc.weight
    dequantize_model(model)
    assert not any(isinstance(m, NF4Linear) for m in model.modules())
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, weight)
    torch.testing.assert_close(model(tokens())[0], expected)


def test_the_4bit_base_takes_at_most_30_percent_of_its_bf16_bytes():
    model = tiny_gpt(n_embd=256, n_head=4, vocab_size=64)
    model.to(torch.bfloat16)
    blocks = ["transformer.h.0", "transformer.h.1"]
    names = [
        f"{b}.{p}" for b in blocks for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    bf16 = sum(weight_bytes(model.get_submodule(n)) for n in names)
    assert bf16 == sum(
        2 * (m.weight.numel() + m.bias.numel()) for m in map(model.get_submodule, names)
    )
    quantize_model(model, compute_dtype=torch.bfloat16)
    nf4 = sum(weight_bytes(model.get_submodule(n)) for n in names)
    assert nf4 <= 0.30 * bf16, nf4 / bf16
    # The tied head / embedding is held once, however many names reach it.
    assert weight_bytes(model) == weight_bytes(model.transformer)
