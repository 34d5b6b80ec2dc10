"""QLoRA on a GPT-2-124M-shaped model: NF4 memory, quantise time, round-trip error, CPU forward time.

    .venv/bin/python bench/bench_qlora.py               # the full 124M shape
    .venv/bin/python bench/bench_qlora.py --quick       # 4 layers, fewer timing repeats

Model: GPT-2 small (12 layers, 12 heads, 768 wide, 50304 vocabulary, 1024 context) with
random GPT-2 initialisation; quantisation speed, storage and the error relative to the
bound depend on the weights' distribution, not on training. Only the transformer blocks'
Linear layers are quantised (the default: lm_head is tied to the token embedding).

Memory is measured two ways: torch storage sizes (``weight_bytes``: the bytes of the
tensors' storages, shared storages once) and the growth of the process RSS while the
bf16 copies / the NF4 states of those weights are created (glibc's free memory is trimmed
before every reading, so freed temporaries do not count). Error: per element
``|w - dequant(w)|`` over the bound of its block, ``a * D/2 + s/254`` (qlora.py docstring);
every ratio must be at most 1. Forward: median wall time of ``model(idx)`` without grad
on a small batch; the QLoRA model carries rank-8 adapters on every block projection and
dequantises its weights in every forward. Goal: NF4 (double quant) <= 0.30 of bf16.
Output: ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.finetune.lora import LoRAConfig, apply_lora  # noqa: E402
from engine.finetune.qlora import (  # noqa: E402
    NF4Linear,
    dequantize_nf4,
    nf4_max_half_gap,
    quantize_model,
    quantize_nf4,
    weight_bytes,
)
from engine.models.gpt import GPT, GPTConfig  # noqa: E402

LIBC = ctypes.CDLL("libc.so.6")


def rss_bytes() -> int:
    LIBC.malloc_trim(0)  # give freed heap pages back, so RSS counts live memory only
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def block_linears(model: GPT) -> dict[str, torch.nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if name.startswith("transformer.h.") and isinstance(module, torch.nn.Linear | NF4Linear)
    }


def forward_seconds(model: GPT, idx: torch.Tensor, repeats: int) -> float:
    times = []
    with torch.no_grad():
        model(idx)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(idx)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def qlora(base: GPT, compute_dtype: torch.dtype) -> GPT:
    model = copy.deepcopy(base)
    quantize_model(model, compute_dtype=compute_dtype)
    apply_lora(model, LoRAConfig(r=8, alpha=16))
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers, 2 timing repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="sequence length of the batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 5

    torch.manual_seed(0)
    config = GPTConfig(n_layer=4 if args.quick else 12)  # GPT-2 small defaults otherwise
    base = GPT(config).eval()
    linears = block_linears(base)
    print(
        f"model: GPT-2 small shape, {config.n_layer} layers, {base.num_params() / 1e6:.1f}M params"
    )
    print(f"block_linear_layers: {len(linears)}")
    print(f"block_linear_weights: {sum(m.weight.numel() for m in linears.values()) / 1e6:.1f}M")
    print(f"threads: {args.threads}")

    # Storage, weights only: bf16 vs NF4 with and without double quantisation.
    bf16_bytes = sum(m.weight.numel() * 2 for m in linears.values())
    no_dq_bytes = sum(quantize_nf4(m.weight, double_quant=False).nbytes() for m in linears.values())

    # Quantise (double quant) the whole model's block Linears: the QLoRA step.
    quantized = copy.deepcopy(base)
    start = time.perf_counter()
    quantize_model(quantized, compute_dtype=torch.bfloat16)
    quantize_seconds = time.perf_counter() - start
    layers = block_linears(quantized)
    dq_bytes = sum(layer.quantized.nbytes() for layer in layers.values())
    print("memory_measure: torch storage sizes (weight_bytes), then process RSS growth")
    print(f"block_weight_bytes_bf16: {bf16_bytes}")
    print(f"block_weight_bytes_nf4_double_quant: {dq_bytes}")
    print(f"block_weight_bytes_nf4_no_double_quant: {no_dq_bytes}")
    print(f"ratio_nf4_double_quant_vs_bf16: {dq_bytes / bf16_bytes:.4f}  (goal <= 0.30)")
    print(f"ratio_nf4_no_double_quant_vs_bf16: {no_dq_bytes / bf16_bytes:.4f}")
    # Whole modules as held (weights + biases; NF4Linear keeps its bias in bf16).
    module_bf16 = sum(2 * sum(p.numel() for p in m.parameters()) for m in linears.values())
    module_nf4 = sum(weight_bytes(layer) for layer in layers.values())
    print(f"block_linear_module_bytes_bf16: {module_bf16}")
    print(f"block_linear_module_bytes_nf4: {module_nf4}")
    print(f"ratio_modules_nf4_vs_bf16: {module_nf4 / module_bf16:.4f}")

    # The same, as process memory: create the bf16 copies, then the NF4 states.
    before = rss_bytes()
    bf16_copies = [m.weight.detach().to(torch.bfloat16) for m in linears.values()]
    after_bf16 = rss_bytes()
    nf4_states = [quantize_nf4(m.weight) for m in linears.values()]
    after_nf4 = rss_bytes()
    print(f"rss_growth_bf16_bytes: {after_bf16 - before}")
    print(f"rss_growth_nf4_bytes: {after_nf4 - after_bf16}")
    print(f"ratio_rss_nf4_vs_bf16: {(after_nf4 - after_bf16) / (after_bf16 - before):.4f}")
    del bf16_copies, nf4_states

    print(f"quantize_seconds: {quantize_seconds:.2f}")
    print(
        f"quantize_weights_per_second: {sum(m.weight.numel() for m in linears.values()) / quantize_seconds / 1e6:.1f}M"
    )

    # Round-trip error against the per-block bound a * D/2 + |a - â| <= a * D/2 + s/254.
    worst, total, count, scale_worst = 0.0, 0.0, 0, 0.0
    for name, layer in layers.items():
        weight = linears[name].weight.detach()
        q = layer.quantized
        error = (dequantize_nf4(q) - weight).abs().view(-1)
        blocks = F.pad(weight.abs().view(-1), (0, q.absmax.numel() * q.block_size - weight.numel()))
        absmax = blocks.view(-1, q.block_size).amax(dim=1)  # (blocks,)
        bound = absmax * nf4_max_half_gap() + q.scale_error_bound()
        ratio = error / bound.repeat_interleave(q.block_size)[: weight.numel()]
        worst = max(worst, float(ratio.max()))
        total, count = total + float(ratio.sum()), count + ratio.numel()
        scale_ratio = (q.scales() - absmax).abs() / q.scale_error_bound()
        scale_worst = max(scale_worst, float(scale_ratio.max()))
    print(f"nf4_half_largest_gap: {nf4_max_half_gap():.4f}")
    print(f"roundtrip_error_over_bound_max: {worst:.4f}  (must be <= 1)")
    print(f"roundtrip_error_over_bound_mean: {total / count:.4f}")
    print(f"absmax_double_quant_error_over_half_int8_step_max: {scale_worst:.6f}")
    del quantized, layers

    # CPU forward time on a small batch.
    idx = torch.randint(
        0, config.vocab_size, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0)
    )
    print(f"forward_batch: {args.batch}x{args.tokens} tokens")
    fp32_seconds = forward_seconds(base, idx, repeats)
    print(f"forward_seconds_fp32: {fp32_seconds:.3f}")
    model = qlora(base, torch.float32)
    qlora_fp32_seconds = forward_seconds(model, idx, repeats)
    print(f"forward_seconds_qlora_fp32_compute: {qlora_fp32_seconds:.3f}")
    print(f"forward_slowdown_qlora_vs_fp32: {qlora_fp32_seconds / fp32_seconds:.2f}x")
    del model
    base.to(torch.bfloat16)
    bf16_seconds = forward_seconds(base, idx, repeats)
    print(f"forward_seconds_bf16: {bf16_seconds:.3f}")
    model = qlora(base, torch.bfloat16)
    qlora_bf16_seconds = forward_seconds(model, idx, repeats)
    print(f"forward_seconds_qlora_bf16_compute: {qlora_bf16_seconds:.3f}")
    print(f"forward_slowdown_qlora_vs_bf16: {qlora_bf16_seconds / bf16_seconds:.2f}x")
    print(f"whole_model_bytes_bf16: {weight_bytes(base)}")
    print(f"whole_model_bytes_qlora_bf16: {weight_bytes(model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
