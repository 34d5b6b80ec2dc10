"""Device and dtype from a config's names: ``train.device`` and ``train.dtype``.

device = pick_device(config.train.device, TrainingError)      # "auto" | "cpu" | "cuda"
dtype = pick_dtype(config.train.dtype, device)                # "auto" | "float32" | ...
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str, error: type[Exception] = ValueError) -> torch.device:
    """``auto`` is CUDA when there is one; asking for CUDA without one raises ``error``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise error("train.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[name]


def set_threads(threads: int) -> None:
    """CPU threads for torch's kernels; 0 keeps torch's own choice."""
    if threads:
        torch.set_num_threads(threads)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype``, or nothing at all for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
