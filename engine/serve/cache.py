"""A KV cache whose rows join and leave between decode steps (continuous batching).

Layout: per layer one preallocated buffer ``(slots, n_head, columns, head_size)``. The
active rows are buffer rows ``0 .. rows-1`` and share one timeline of columns; each row's
tokens are **right-aligned** at the timeline's end (``end``), with a per-row attention mask
marking its real columns. A decode step writes every row's new key/value at column ``end``
and attends over the view ``[start, end]``, ``start = end - longest row``. This is the
left-padded layout :class:`engine.models.gpt.GPT` already decodes (positions count real
tokens, padding is masked), so the model needs no change and a row computes exactly what
it computes alone.

* Join: a prompt of ``p`` tokens is prefilled on its own small cache, then its keys/values
  are copied into a free buffer row at columns ``[end - p, end)``: only the new row is
  written; the running rows do not move. ``end`` never drops below ``block_size``, so any
  prompt fits to its left.
* Leave: the last active row is copied into the leaving row's place (one row, the view's
  columns only) and the row count drops; nothing else moves.
* Compaction: when ``end`` reaches the buffer's last column, the view is copied back so it
  ends at ``block_size`` again. The buffer has ``block_size + headroom`` columns, so that
  copy happens at most once every ``headroom`` steps.

Junk in masked columns (left by rows that have gone) is never read: its attention weight
is exactly zero, and the buffers start as zeros so it is always finite.
"""

from __future__ import annotations

import torch

from engine.models.gpt import GPTConfig, KVCache


class SlotCache:
    """Duck-types :class:`KVCache` for the model (``length``, ``update``) over a slot buffer."""

    def __init__(
        self,
        config: GPTConfig,
        slots: int,
        device: torch.device | str,
        dtype: torch.dtype,
        headroom: int | None = None,
    ):
        self.config = config
        self.block_size = config.block_size
        self.headroom = max(16, headroom if headroom is not None else config.block_size // 2)
        self.columns = self.block_size + self.headroom
        self.slots = slots
        head_size = config.n_embd // config.n_head
        shape = (slots, config.n_head, self.columns, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)
        ]
        self.mask = torch.zeros((slots, self.columns), dtype=torch.bool, device=device)
        self.lengths: list[int] = []  # real tokens of each active row
        self.end = self.block_size  # the timeline's next column
        self.length = 0  # view width; the model adds T after each forward
        self.compactions = 0

    # -- what the model calls -----------------------------------------------------------
    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, steps = k.size(0), k.size(2)
        start = self.end - self.length
        self.keys[layer][:rows, :, self.end : self.end + steps] = k
        self.values[layer][:rows, :, self.end : self.end + steps] = v
        stop = self.end + steps
        return self.keys[layer][:rows, :, start:stop], self.values[layer][:rows, :, start:stop]

    # -- what the engine calls ----------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def free(self) -> int:
        return self.slots - self.rows

    def uniform(self) -> bool:
        """Every row fills the whole view: no mask needed (the fused attention path)."""
        return all(length == self.length for length in self.lengths)

    def step_mask(self) -> torch.Tensor:
        """Mark column ``end`` real for every row; the (rows, view + 1) mask of this step."""
        if self.end + 1 > self.columns:
            self._compact()
        rows = self.rows
        self.mask[:rows, self.end] = True
        return self.mask[:rows, self.end - self.length : self.end + 1]

    def advance(self) -> None:
        """After a decode step's forward: each row holds one more token."""
        self.end += 1
        self.lengths = [length + 1 for length in self.lengths]
        # The model already added 1 to ``length`` (the view grows with the new column).

    def add(self, prefill: KVCache, row: int, prompt_tokens: int, copies: int = 1) -> list[int]:
        """Copy row ``row`` of a prefill cache (right-aligned, ``prompt_tokens`` real) into
        ``copies`` free slots; returns their indices."""
        if copies > self.free:
            raise ValueError(f"{copies} rows do not fit; {self.free} slots are free")
        if prompt_tokens > self.end:  # cannot happen: end >= block_size >= any prompt
            raise ValueError("prompt longer than the timeline")
        filled = prefill.length
        source = slice(filled - prompt_tokens, filled)
        target = slice(self.end - prompt_tokens, self.end)
        first = self.rows
        slots = list(range(first, first + copies))
        for layer in range(len(self.keys)):
            k = prefill.keys[layer][row, :, source]
            v = prefill.values[layer][row, :, source]
            self.keys[layer][first : first + copies, :, target] = k
            self.values[layer][first : first + copies, :, target] = v
        self.mask[first : first + copies] = False
        self.mask[first : first + copies, target] = True
        self.lengths.extend([prompt_tokens] * copies)
        self.length = max(self.length, prompt_tokens)
        return slots

    def remove(self, slot: int) -> int | None:
        """Free ``slot``; the last row moves into it. Returns the slot that moved (its old
        index) or None when the removed row was the last."""
        last = self.rows - 1
        moved = None
        if slot != last:
            start = self.end - self.length
            view = slice(start, self.end)
            for layer in range(len(self.keys)):
                self.keys[layer][slot, :, view] = self.keys[layer][last, :, view]
                self.values[layer][slot, :, view] = self.values[layer][last, :, view]
            self.mask[slot] = self.mask[last]
            self.lengths[slot] = self.lengths[last]
            moved = last
        self.lengths.pop()
        self.length = max(self.lengths, default=0)  # the view shrinks to the longest row
        if not self.lengths:
            self.end = self.block_size
        return moved

    def _compact(self) -> None:
        """Copy the view so that it ends at ``block_size`` again (room for headroom steps)."""
        rows, width = self.rows, self.length
        old = slice(self.end - width, self.end)
        new = slice(self.block_size - width, self.block_size)
        for layer in range(len(self.keys)):
            self.keys[layer][:rows, :, new] = self.keys[layer][:rows, :, old].clone()
            self.values[layer][:rows, :, new] = self.values[layer][:rows, :, old].clone()
        mask = self.mask[:rows, old].clone()
        self.mask[:rows] = False
        self.mask[:rows, new] = mask
        self.end = self.block_size
        self.compactions += 1

    def clear(self) -> None:
        """Drop every row."""
        self.lengths = []
        self.length = 0
        self.end = self.block_size
