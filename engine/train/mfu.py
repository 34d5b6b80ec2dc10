"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak.

FLOPs per token = 6 N + 12 L H Q T (PaLM, appendix B): 6 per parameter for forward and
backward, plus attention's score and value matmuls. Peaks are dense bf16 tensor-core
figures from the vendors' data sheets; on CPU there is no agreed peak, so MFU is left out
unless ``train.peak_flops`` gives one.
"""

from __future__ import annotations

import torch

# device-name fragment -> dense bf16 peak FLOP/s (no sparsity)
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a CUDA device, None when unknown (or on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, flops in PEAK_BF16_FLOPS.items():
        if fragment in name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_second: float, peak: float | None) -> float | None:
    if not peak:
        return None
    return flops_per_token * tokens_per_second / peak
