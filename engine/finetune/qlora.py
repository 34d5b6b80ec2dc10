"""QLoRA: a frozen 4-bit NormalFloat (NF4) base with LoRA adapters on top (Dettmers et al. 2023).

    from engine.finetune.qlora import quantize_model, dequantize_model, weight_bytes
    from engine.finetune.lora import LoRAConfig, apply_lora, save_adapter
    model = GPT(config)                                  # pre-trained base, fp32 or bf16
    quantize_model(model, compute_dtype=torch.bfloat16)  # block Linears -> NF4Linear (4-bit)
    apply_lora(model, LoRAConfig(r=8, alpha=16))         # adapters in bf16 on the NF4 bases
    ...train: only lora_A / lora_B have requires_grad...
    save_adapter(model, "out/adapter")                   # same adapter files as plain LoRA
    dequantize_model(model); merge_lora(model)           # merging needs a real weight first

Storage (paper section 3). A weight is flattened row-major and cut into blocks of 64
values; each block keeps its absmax ``a`` and, per value, the index of the nearest of
the 16 NF4 levels to ``w / a``, two 4-bit codes per byte (first value in the high
nibble). Double quantisation: the fp32 absmax values, minus their mean, are quantised
again in groups of 256 with one fp32 scale per group. Per weight that is
4 + 8/64 + 32/(64*256) = 4.127 bits, 25.8% of bf16 (4.5 bits, 28.1%, without double
quantisation). The second-level code is symmetric linear int8 (round(c / s * 127));
bitsandbytes uses its dynamic 8-bit float map there: same storage, but the linear code
gives the simple error bound below.

Error bound (per element ``w`` of a block with absmax ``a``; tested, reported by the bench).
NF4 rounds ``x = w / a`` in [-1, 1] to its nearest level ``L``, so ``|x - L| <= D / 2`` with
``D`` the largest gap between adjacent levels (0.3038, between -1 and -0.6962). The
stored scale is the double-quantised ``â`` with ``|a - â| <= s / 254`` (half an int8 step,
``s`` = the group's absmax of ``a - mean``). Then, since ``|L| <= 1``::

    |w - L â| <= |x a - L a| + |L| |a - â| <= a D / 2 + |a - â| <= a D / 2 + s / 254

(without double quantisation the second term is 0; fp32 rounding adds ~1e-7 of ``a``). A zero weight maps to the exact 0
level, so zeros stay exactly zero whatever the scale.

:class:`NF4Linear` holds the quantised state in buffers (no parameters: nothing to
train, and ``state_dict`` round-trips it) and dequantises to its ``compute_dtype`` in
every forward, and again in backward instead of keeping the full weight for the
gradient, as bitsandbytes' Linear4bit does. GPT ties ``lm_head`` to the token embedding,
so by default only the transformer blocks' Linear layers are quantised; quantising a
tied weight is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.finetune.modules import match_modules, replace_module

# The 16 NF4 levels as published (QLoRA appendix E; bitsandbytes' NF4 code): quantiles of
# N(0, 1) normalised to [-1, 1], 8 positive and 7 negative ones, plus an exact zero.
NF4_LEVELS = (
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
)
BLOCK_SIZE = 64  # values per absmax (paper: 64 for the weights)
DOUBLE_QUANT_BLOCK_SIZE = 256  # absmax values per second-level fp32 scale (paper: 256)
INT8_MAX = 127  # symmetric int8 code for the centred absmax values
# Linear layers inside the transformer blocks; the tied lm_head / wte stay as they are.
DEFAULT_TARGETS = ("transformer.h.*",)


def nf4_levels(device: torch.device | str | None = None) -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def nf4_max_half_gap() -> float:
    """Half the largest gap between adjacent NF4 levels: the worst rounding of ``w / a``."""
    return float(nf4_levels().diff().max()) / 2


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """(N,) uint8 codes in [0, 16), N even -> (N/2,) uint8, the first of each pair high."""
    pairs = codes.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """(N/2,) uint8 -> (N,) uint8 codes; the inverse of :func:`pack_4bit`."""
    return torch.stack((packed >> 4, packed & 0x0F), dim=1).view(-1)


@dataclass
class NF4Weight:
    """A weight in NF4: packed codes plus the block scales (double-quantised or fp32)."""

    packed: torch.Tensor  # (n_blocks * block_size / 2,) uint8, two codes per byte
    # Double quantisation: int8 codes of (absmax - offset) per block, (n_blocks,);
    # otherwise the fp32 absmax values themselves.
    absmax: torch.Tensor
    absmax_scale: torch.Tensor | None  # (ceil(n_blocks / 256),) fp32: the groups' absmax
    absmax_offset: torch.Tensor | None  # () fp32: the mean absmax subtracted before
    shape: tuple[int, ...]
    block_size: int = BLOCK_SIZE

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    def scales(self) -> torch.Tensor:
        """The per-block absmax ``â`` the dequantisation multiplies by, (n_blocks,) fp32."""
        if not self.double_quant:
            return self.absmax
        step = self.absmax_scale / INT8_MAX  # (groups,)
        step = step.repeat_interleave(DOUBLE_QUANT_BLOCK_SIZE)[: self.absmax.numel()]
        return self.absmax.float() * step + self.absmax_offset

    def scale_error_bound(self) -> torch.Tensor:
        """Per block, the most the double quantisation can move ``a``: half an int8 step."""
        if not self.double_quant:
            return torch.zeros_like(self.absmax)
        half_step = self.absmax_scale / (2 * INT8_MAX)
        return half_step.repeat_interleave(DOUBLE_QUANT_BLOCK_SIZE)[: self.absmax.numel()]

    def nbytes(self) -> int:
        tensors = (self.packed, self.absmax, self.absmax_scale, self.absmax_offset)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def quantize_nf4(
    weight: torch.Tensor, block_size: int = BLOCK_SIZE, double_quant: bool = True
) -> NF4Weight:
    """Quantise any-shaped float ``weight`` to NF4 with an absmax per ``block_size`` values."""
    if block_size < 2 or block_size % 2:
        raise ValueError(f"NF4 block_size must be even and at least 2, got {block_size}")
    if weight.numel() == 0:
        raise ValueError("cannot quantise an empty weight")
    flat = weight.detach().reshape(-1).float()
    if not torch.isfinite(flat).all():
        raise ValueError("weight has NaN or infinite values; NF4 needs finite weights")
    n_blocks = math.ceil(flat.numel() / block_size)
    flat = F.pad(flat, (0, n_blocks * block_size - flat.numel()))  # zeros stay zero
    blocks = flat.view(n_blocks, block_size)  # (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    # An all-zero block divides by 1 instead: its values are 0 and map to the 0 level.
    normalised = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]  # in [-1, 1]
    levels = nf4_levels(flat.device)
    # Nearest level = which interval between the 15 midpoints the value falls into.
    codes = torch.bucketize(normalised, (levels[1:] + levels[:-1]) / 2).to(torch.uint8)
    packed = pack_4bit(codes.view(-1))
    if not double_quant:
        return NF4Weight(packed, absmax, None, None, tuple(weight.shape), block_size)
    # Double quantisation (paper section 3): absmax values are positive, so centring them
    # on their mean lets a symmetric 8-bit code use its whole range.
    offset = absmax.mean()
    centred = absmax - offset
    groups = math.ceil(n_blocks / DOUBLE_QUANT_BLOCK_SIZE)
    padded = F.pad(centred, (0, groups * DOUBLE_QUANT_BLOCK_SIZE - n_blocks))
    group_absmax = padded.view(groups, DOUBLE_QUANT_BLOCK_SIZE).abs().amax(dim=1)  # (groups,)
    step = torch.where(group_absmax > 0, group_absmax, 1.0) / INT8_MAX
    step = step.repeat_interleave(DOUBLE_QUANT_BLOCK_SIZE)[:n_blocks]
    absmax_codes = torch.round(centred / step).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return NF4Weight(packed, absmax_codes, group_absmax, offset, tuple(weight.shape), block_size)


def dequantize_nf4(q: NF4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight back in ``dtype``: level[code] * â per block, in the original shape."""
    # One lookup per byte into a (256, 2) table of level pairs decodes both nibbles at
    # once: ~2.5x faster on CPU than unpacking the codes and indexing the 16 levels.
    levels = nf4_levels(q.packed.device)
    pairs = torch.stack((levels.repeat_interleave(16), levels.repeat(16)), dim=1)  # (256, 2)
    values = pairs.index_select(0, q.packed.int()).view(-1, q.block_size)  # (n_blocks, block)
    values.mul_(q.scales()[:, None])
    return values.view(-1)[: math.prod(q.shape)].view(q.shape).to(dtype)


class _DequantizedLinear(torch.autograd.Function):
    """y = x W^T with W dequantised in forward and again in backward.

    Autograd would otherwise keep every layer's full-precision W alive until backward,
    giving back most of the memory the 4-bit storage saved. W itself takes no gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.weight)  # (..., out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return grad_out @ ctx.layer.weight, None  # (..., in)


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 and dequantised on the fly.

    Build one with :meth:`from_linear`; ``NF4Linear(in, out, bias)`` makes an empty one of
    the same layout to ``load_state_dict`` into. Inputs are cast to ``compute_dtype`` and
    outputs back to the input's dtype (so a bf16 base works inside an fp32 model).
    """

    # fp32 quantisation state; ``module.to(torch.bfloat16)`` must not round it.
    _FP32_STATE = ("weight_absmax", "weight_absmax_scale", "weight_absmax_offset")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        block_size: int = BLOCK_SIZE,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block_size = block_size
        self.compute_dtype = compute_dtype
        n_blocks = math.ceil(in_features * out_features / block_size)
        groups = math.ceil(n_blocks / DOUBLE_QUANT_BLOCK_SIZE)
        self.register_buffer(
            "weight_packed",
            torch.zeros(n_blocks * block_size // 2, dtype=torch.uint8, device=device),
        )
        absmax_dtype = torch.int8 if double_quant else torch.float32
        self.register_buffer(
            "weight_absmax", torch.zeros(n_blocks, dtype=absmax_dtype, device=device)
        )
        self.register_buffer(
            "weight_absmax_scale", torch.zeros(groups, device=device) if double_quant else None
        )
        self.register_buffer(
            "weight_absmax_offset", torch.zeros((), device=device) if double_quant else None
        )
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=compute_dtype, device=device) if bias else None
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        block_size: int = BLOCK_SIZE,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> NF4Linear:
        q = quantize_nf4(linear.weight, block_size, double_quant)
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            block_size=block_size,
            double_quant=double_quant,
            compute_dtype=compute_dtype,
            device=linear.weight.device,
        )
        layer.weight_packed.copy_(q.packed)
        layer.weight_absmax.copy_(q.absmax)
        if double_quant:
            layer.weight_absmax_scale.copy_(q.absmax_scale)
            layer.weight_absmax_offset.copy_(q.absmax_offset)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    @property
    def quantized(self) -> NF4Weight:
        """The stored state as an :class:`NF4Weight` (views of the buffers, no copy)."""
        return NF4Weight(
            self.weight_packed,
            self.weight_absmax,
            self.weight_absmax_scale,
            self.weight_absmax_offset,
            (self.out_features, self.in_features),
            self.block_size,
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (out, in) in ``compute_dtype``; a fresh tensor each call."""
        return dequantize_nf4(self.quantized, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _DequantizedLinear.apply(x.to(self.compute_dtype), self)  # (..., out)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out.to(x.dtype)

    def _apply(self, fn, recurse=True):
        kept = {name: getattr(self, name) for name in self._FP32_STATE}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = getattr(self, name)
            if after is not None and after.dtype != before.dtype:
                setattr(self, name, before.to(after.device))  # moved, never cast
        return self

    def extra_repr(self) -> str:
        dq = self.weight_absmax_scale is not None
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, block_size={self.block_size}, double_quant={dq}, "
            f"compute_dtype={self.compute_dtype}"
        )


def _tied_parameters(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> every name it is reachable under (more than one: tied)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def quantize_model(
    model: nn.Module,
    target_modules: list[str] | tuple[str, ...] = DEFAULT_TARGETS,
    compute_dtype: torch.dtype = torch.bfloat16,
    *,
    block_size: int = BLOCK_SIZE,
    double_quant: bool = True,
) -> list[str]:
    """Replace the ``nn.Linear`` layers matching the fnmatch ``target_modules`` by NF4Linear.

    Returns the replaced names. Quantise before ``apply_lora``. Raises ValueError naming a
    pattern that matches no Linear layer, or a layer whose weight is tied to another
    (GPT's lm_head shares the token embedding: quantising it would untie the two).
    """
    if not target_modules:
        raise ValueError("quantize_model needs at least one target module pattern")
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError("quantise the model before apply_lora, not after")
    linears = match_modules(
        model, target_modules, lambda m: type(m) is nn.Linear, "quantize target"
    )
    chosen = list(linears)
    tied = _tied_parameters(model)
    for name in chosen:
        shared = tied[id(linears[name].weight)]
        if len(shared) > 1:
            others = [n for n in shared if n != f"{name}.weight"]
            raise ValueError(
                f"cannot quantise {name!r}: its weight is tied to {others}; "
                "quantising it would untie them (leave it out of target_modules)"
            )
    for name in chosen:
        try:
            layer = NF4Linear.from_linear(
                linears[name],
                block_size=block_size,
                double_quant=double_quant,
                compute_dtype=compute_dtype,
            )
        except ValueError as error:
            raise ValueError(f"cannot quantise {name!r}: {error}") from error
        replace_module(model, name, layer)
    return sorted(chosen)


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> list[str]:
    """Replace every NF4Linear (LoRA bases included) by a frozen ``nn.Linear``; return names.

    The new weight is the dequantised one (in ``dtype``, default the layer's compute
    dtype), so outputs are unchanged; after this, ``merge_lora`` can fold the adapters in.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, NF4Linear)}
    for name, layer in layers.items():
        target = dtype or layer.compute_dtype
        linear = nn.Linear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight_packed.device,
            dtype=target,
        )
        with torch.no_grad():
            linear.weight.copy_(layer.weight)
            if layer.bias is not None:
                linear.bias.copy_(layer.bias)
        linear.requires_grad_(False)  # frozen like the NF4 base was
        replace_module(model, name, linear)
    return sorted(layers)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of tensor storage held by ``module``'s parameters and buffers, shared ones once."""
    storages: dict[int, int] = {}
    tensors = list(module.parameters()) + list(module.buffers())
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())
