"""Trainable token rows: LoRA's companion for tokens the base model never learnt.

A chat template brings tokens that pre-training reserved but never used (``<|user|>``,
``<|assistant|>``, often end-of-text as a target): their embedding rows, and the output
head's rows that predict them, are still at their random initialisation. Low-rank updates
of the attention and MLP projections cannot move those rows, so the model struggles to
read the roles and to end its answers. Following PEFT's ``trainable_token_indices``, we
train a delta for those rows only: ``k x n_embd`` parameters, a few hundred at our sizes.

    rows = add_token_rows(model, [user_id, assistant_id, eot_id])   # after apply_lora
    ...train: rows.delta has requires_grad...
    merge: embedding.weight[ids] += delta (the tied output head sees it too)

The embedding and the output head are wrapped (``transformer.wte`` and ``lm_head`` in
GPT); when they share one weight (GPT-2's tying) they share one delta, so the merged
model is tied as before.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenRows(nn.Module):
    """A zero-initialised delta for ``ids`` rows of a (vocab, n_embd) weight."""

    def __init__(self, ids: list[int], vocab_size: int, dim: int, reference: torch.Tensor):
        super().__init__()
        if not ids:
            raise ValueError("trainable tokens: no token ids given")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"trainable tokens {bad} are outside the vocabulary of {vocab_size}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"trainable tokens must be distinct, got {ids}")
        self.register_buffer("ids", torch.tensor(ids, device=reference.device), persistent=False)
        # lookup[token] = its row in delta, or k (a zero row) for every other token.
        lookup = torch.full((vocab_size,), len(ids), dtype=torch.long, device=reference.device)
        lookup[self.ids] = torch.arange(len(ids), device=reference.device)
        self.register_buffer("lookup", lookup, persistent=False)
        self.delta = nn.Parameter(
            torch.zeros(len(ids), dim, device=reference.device, dtype=reference.dtype)
        )

    def rows_for(self, idx: torch.Tensor) -> torch.Tensor:
        """delta of each token in idx (B, T) -> (B, T, C); zeros for untrained tokens."""
        padded = torch.cat([self.delta, self.delta.new_zeros(1, self.delta.size(1))])
        return padded[self.lookup[idx]]


def _correction(merged: bool, disabled: bool) -> float:
    """What to add to the base output: the delta is wanted when enabled, present when merged."""
    return float(not disabled) - float(merged)


class _RowsLayer(nn.Module):
    """A frozen base layer plus the delta of some token rows; ``writes`` its weight on merge."""

    def __init__(self, base: nn.Module, rows: TokenRows, writes: bool):
        super().__init__()
        self.base, self.rows, self.writes = base, rows, writes
        self.merged = False
        self.disabled = False  # True: behave as the base alone (the DPO/PPO reference)
        base.weight.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            if self.writes:
                self.base.weight[self.rows.ids] += self.rows.delta.to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            if self.writes:
                self.base.weight[self.rows.ids] -= self.rows.delta.to(self.base.weight.dtype)
            self.merged = False


class TokenRowsEmbedding(_RowsLayer):
    def __init__(self, base: nn.Embedding, rows: TokenRows):
        super().__init__(base, rows, writes=True)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = self.base(idx)
        sign = _correction(self.merged, self.disabled)
        if not sign:
            return out
        return out + sign * self.rows.rows_for(idx).to(out.dtype)


class TokenRowsHead(_RowsLayer):
    """The output head with the delta on the trained tokens' rows (their logits only)."""

    def __init__(self, base: nn.Linear, rows: TokenRows, tied: bool):
        # Tied: the embedding's merge writes the shared weight; writing again would double it.
        super().__init__(base, rows, writes=not tied)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        sign = _correction(self.merged, self.disabled)
        if not sign:
            return out
        extra = F.linear(x.to(self.rows.delta.dtype), self.rows.delta)  # (..., k)
        return out.index_add(-1, self.rows.ids, (sign * extra).to(out.dtype))


TOKEN_LAYERS = (TokenRowsEmbedding, TokenRowsHead)


def add_token_rows(
    model: nn.Module,
    ids: list[int],
    embedding: str = "transformer.wte",
    head: str = "lm_head",
) -> list[str]:
    """Wrap the embedding and output head so the rows of ``ids`` train; return their names."""
    from engine.finetune.modules import replace_module

    emb = model.get_submodule(embedding)
    out = model.get_submodule(head)
    if not isinstance(emb, nn.Embedding) or not isinstance(out, nn.Linear):
        raise ValueError(
            f"trainable tokens need an nn.Embedding at {embedding!r} and an nn.Linear at {head!r}"
        )
    vocab, dim = emb.weight.shape
    rows = TokenRows(ids, vocab, dim, emb.weight)
    tied = out.weight is emb.weight
    # Untied: the head's rows are other weights, so they get their own delta.
    head_rows = rows if tied else TokenRows(ids, out.out_features, out.in_features, out.weight)
    replace_module(model, embedding, TokenRowsEmbedding(emb, rows))
    replace_module(model, head, TokenRowsHead(out, head_rows, tied))
    return [embedding, head]
