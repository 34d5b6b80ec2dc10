"""A decoder-only transformer in one file: GPT-2 by default, Llama-style by config switches.

    from engine.models.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    logits, loss = model(idx, targets)                  # idx, targets: (B, T) int64
    llama = GPT(GPTConfig.llama_style(vocab_size=32000))  # RMSNorm + rotary + SwiGLU

GPT-2 (the default): pre-LayerNorm blocks, GELU MLP, learned positions, output head tied
to the token embedding, GPT-2 initialisation (N(0, 0.02), residual projections scaled by
1/sqrt(2 * n_layer)). Module names follow nanoGPT, which follows Hugging Face GPT-2
(``transformer.h.0.attn.c_attn`` ...), so export to that layout is a renaming and a transpose.

Attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient
kernels on GPU). For generation the model takes a :class:`KVCache` and an optional
``attention_mask`` (B, T_total) marking real tokens, so left-padded prompts of different
lengths decode together; positions then count real tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 for faster matmuls
    # Longest sequence the model sees (learned positions / rotary table).
    block_size: int = field(
        default=1024, metadata={"minimum": 8, "maximum": 8192, "help": "context length"}
    )
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    # 0 for pre-training large data; 0.1-0.2 for small data fine-tuning.
    dropout: float = field(
        default=0.0, metadata={"minimum": 0.0, "maximum": 0.9, "help": "dropout"}
    )
    bias: bool = True  # biases in Linear and norm layers (GPT-2 has them; False is a bit faster)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    position: Literal["learned", "rotary"] = "learned"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    tie_embeddings: bool = True  # share the token embedding with the output head (GPT-2)
    rope_theta: float = 10000.0  # rotary base; only read when position == "rotary"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError("model.position 'rotary' needs an even head size (n_embd / n_head)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        choices = {
            "norm": ("layernorm", "rmsnorm"),
            "position": ("learned", "rotary"),
            "mlp": ("gelu", "swiglu"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )

    @classmethod
    def llama_style(cls, **overrides) -> GPTConfig:
        """RMSNorm, rotary positions, SwiGLU, no biases, untied head (Llama's choices)."""
        base = dict(
            norm="rmsnorm", position="rotary", mlp="swiglu", bias=False, tie_embeddings=False
        )
        return cls(**{**base, **overrides})

    @property
    def is_gpt2(self) -> bool:
        """True when the architecture is exactly GPT-2's (exportable in the HF GPT-2 layout)."""
        return (
            self.norm == "layernorm"
            and self.position == "learned"
            and self.mlp == "gelu"
            and self.tie_embeddings
        )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes) -> GPTConfig:
        return replace(self, **changes)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        return out + self.bias if self.bias is not None else out


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps, config.bias)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rotary_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (block_size, head_size / 2) for rotary embeddings (RoFormer eq. 34)."""
    head_size = config.n_embd // config.n_head
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, head_size, 2).float() / head_size))
    angles = torch.outer(torch.arange(config.block_size).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves (the Hugging Face Llama convention). x: (B, H, T, D); cos/sin: (B, 1, T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class KVCache:
    """Keys and values of past positions, preallocated for ``max_len`` positions per layer."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype):
        if max_len > config.block_size:
            raise ValueError(
                f"a KV cache of {max_len} positions exceeds block_size {config.block_size}"
            )
        head_size = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, max_len, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)
        ]
        self.length = 0  # positions filled so far (same for every layer once a forward ends)
        self.max_len = max_len

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) after the cached positions; return all keys/values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache is full ({self.max_len} positions)")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (finished sequences leave the batch)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, T_past + T, D)
        dropout = self.dropout if self.training else 0.0
        if mask is None:
            # No padding: the fused causal kernels apply. A single new token with a
            # cache sees every past position, so no mask at all.
            causal = k.size(2) == T and T > 1
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU keeps the parameter count of a 4x GELU MLP with 2/3 of the width (Shazeer 2020).
        hidden = 4 * config.n_embd if not self.swiglu else _multiple_of(8 * config.n_embd // 3, 64)
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        if self.swiglu:
            self.c_gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")  # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))


def _multiple_of(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rotary=None, cache=None, mask=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=make_norm(config),
        )
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.position == "rotary":
            cos, sin = rotary_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 paper: scale the residual projections by 1/sqrt(N) at initialisation,
        # N = 2 * n_layer residual additions, so activations do not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; without the position table by default (it costs no matmul FLOPs)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            total -= self.transformer.wpe.weight.numel()
        return total

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N + 12 L H Q T (PaLM appendix B, as in nanoGPT)."""
        cfg = self.config
        return (
            6 * self.num_params()
            + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size
        )

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> the final normalised hidden states (B, T, n_embd).

        What the language-model head reads; reward and value heads read it too.
        """
        B, T = idx.size()
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than block_size {self.config.block_size}"
            )
        positions, mask = self._positions_and_mask(B, T, past, attention_mask, idx.device)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(positions)
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (T or B, T, D/2)
            if positions.dim() == 1:
                cos, sin = cos[None], sin[None]
            rotary = (cos.unsqueeze(1), sin.unsqueeze(1))  # (B or 1, 1, T, D/2)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rotary, cache, mask)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, vocab) and the mean cross-entropy if targets are given.

        ``attention_mask`` (B, T_past + T), 1 for real tokens, 0 for (left) padding; it is
        only needed when a batch holds prompts of different lengths. ``last_only`` returns
        logits of the last position only, (B, 1, vocab), which is all sampling needs.
        """
        x = self.hidden_states(idx, cache=cache, attention_mask=attention_mask)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    @staticmethod
    def _positions_and_mask(B, T, past, attention_mask, device):
        """Positions, (T,) or (B, T), and a boolean SDPA mask (B, 1, T, past + T) or None."""
        if attention_mask is None:
            # (T,) broadcast over the batch: the position embedding's backward then
            # accumulates T rows instead of B * T.
            positions = torch.arange(past, past + T, device=device)
            if past == 0 or T == 1:
                return positions, None  # SDPA's is_causal (or no mask) is exact here
            # Several new tokens after cached ones: is_causal would align the triangle to
            # the top-left corner, so spell the causal mask out.
            attention_mask = torch.ones(B, past + T, dtype=torch.bool, device=device)
        if attention_mask.shape != (B, past + T):
            raise ValueError(
                f"attention_mask must have shape {(B, past + T)}, got {tuple(attention_mask.shape)}"
            )
        real = attention_mask.bool()
        # Positions count real tokens only, so a left-padded prompt is embedded exactly
        # like the same prompt alone.
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        query_at = torch.arange(past, past + T, device=device).view(T, 1)
        key_at = torch.arange(past + T, device=device).view(1, past + T)
        causal = key_at <= query_at  # (T, past + T)
        # A padding query would see no key at all (NaN rows); let it see itself. Its
        # output is never used, and real queries never see padding keys.
        itself = key_at == query_at
        mask = (causal & real[:, None, :]) | itself
        return positions, mask.unsqueeze(1)
