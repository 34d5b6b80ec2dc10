"""Preference pairs: tokenizing, batching and scoring chosen/rejected responses.

    from engine.finetune.preference import preference_batches, sequence_logps
    template = ChatTemplate(tokenizer)
    batches = preference_batches(template, records, batch_size=8, block_size=256)
    batch = batches[0]                   # input_ids (2B, T): B chosen rows, then B rejected
    logps = sequence_logps(model, batch.input_ids, batch.loss_mask)   # (2B,)
    chosen, rejected = logps.chunk(2)

A preference record is ``{"prompt", "chosen", "rejected"[, "system"]}``. Chosen and
rejected are each encoded with the chat template as if they were the response of an SFT
record, so the prompt tokens are identical in both rows and never scored.

Layout of a :class:`PairBatch` (the one convention DPO and the reward model share):

- ``input_ids`` (2B, T): the B chosen rows first, then the B rejected rows of the same
  records in the same order; right-padded to the longest row of the batch. Causal
  attention means a real token never sees the padding after it, so training forwards
  need no attention mask.
- ``loss_mask`` (2B, T - 1) bool, aligned with the next-token targets: ``loss_mask[i, t]``
  is True when ``input_ids[i, t + 1]`` is a response token (the end-of-text included), i.e.
  when the logit the model emits at position t is scored. The model is run on
  ``input_ids[:, :-1]`` and its log-probs are read at ``input_ids[:, 1:]``.
- ``lengths`` (2B,): real tokens per row; the reward model reads position ``lengths - 1``.
- ``indices`` (B,): the record index of each pair, for error messages and bookkeeping.

Every row must fit the context in full (at most ``block_size`` tokens): the reward model
reads all of them, and the same batches serve DPO.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.finetune.objective import FinetuneError
from engine.finetune.sft import ChatTemplate, Example

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class PairBatch:
    input_ids: torch.Tensor  # (2B, T) int64, chosen rows then rejected rows, right-padded
    loss_mask: torch.Tensor  # (2B, T - 1) bool, True where the next token is a response token
    lengths: torch.Tensor  # (2B,) int64 real tokens per row
    indices: list[int]  # (B,) record index of each pair
    # Reference log-probs (chosen (B,), rejected (B,)) when computed ahead of training
    # (dpo.precompute_reference_logps); None means the reference is run at each step.
    reference_logps: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_pairs(self) -> int:
        return self.input_ids.size(0) // 2

    def to(self, device: torch.device | str) -> PairBatch:
        reference = None
        if self.reference_logps is not None:
            reference = tuple(t.to(device) for t in self.reference_logps)
        return PairBatch(
            self.input_ids.to(device),
            self.loss_mask.to(device),
            self.lengths.to(device),
            list(self.indices),
            reference,
        )


def encode_preference(
    template: ChatTemplate, record: Mapping[str, str], index: int = 0
) -> tuple[Example, Example]:
    """(chosen, rejected) Examples of one preference record; errors name the record index."""
    if not isinstance(record, Mapping):
        raise ValueError(f"record {index}: expected a dict, got {type(record).__name__}")
    for key in PREFERENCE_FIELDS:
        if not isinstance(record.get(key), str) or not record[key]:
            raise ValueError(f"record {index}: missing or empty field {key!r}")
    base = {"prompt": record["prompt"]}
    if record.get("system"):
        base["system"] = record["system"]
    chosen = template.encode({**base, "response": record["chosen"]}, index)
    rejected = template.encode({**base, "response": record["rejected"]}, index)
    return chosen, rejected


def collate_preferences(
    pairs: Sequence[tuple[Example, Example]],
    pad_id: int,
    block_size: int,
    indices: Sequence[int] | None = None,
) -> PairBatch:
    """Right-pad B (chosen, rejected) pairs into one :class:`PairBatch`.

    ``indices`` are the record numbers the pairs came from (default 0..B-1); a row longer
    than ``block_size`` raises ValueError naming its record.
    """
    if not pairs:
        raise ValueError("no preference pairs to collate")
    indices = list(range(len(pairs))) if indices is None else list(indices)
    if len(indices) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(indices)} record indices")
    rows = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
    for row, index in zip(rows, indices + indices, strict=True):
        if len(row.ids) > block_size:
            raise ValueError(
                f"record {index}: {len(row.ids)} tokens (prompt + response) do not fit "
                f"the context (block_size {block_size})"
            )
        if len(row.ids) < 2 or not any(row.is_response[1:]):
            raise ValueError(f"record {index}: no response token to score")
    width = max(len(row.ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, : len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
        # Shift by one: the logit at t predicts token t + 1 (see the module docstring).
        loss_mask[i, : len(row.ids) - 1] = torch.tensor(row.is_response[1:], dtype=torch.bool)
    lengths = torch.tensor([len(row.ids) for row in rows], dtype=torch.long)
    return PairBatch(input_ids, loss_mask, lengths, indices)


def preference_batches(
    template: ChatTemplate,
    records: Sequence[Mapping[str, str]],
    *,
    batch_size: int,
    block_size: int,
    shuffle: bool = False,
    seed: int = 0,
) -> list[PairBatch]:
    """Encode every record and collate them into batches of ``batch_size`` pairs.

    All records are encoded first, so a bad record fails before any training starts.
    Shuffling (once, with ``seed``) mixes record lengths across batches; without it
    batches follow the record order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pairs = [encode_preference(template, record, index) for index, record in enumerate(records)]
    if not pairs:
        raise ValueError("no preference records")
    order = list(range(len(pairs)))
    if shuffle:
        random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batches.append(
            collate_preferences([pairs[i] for i in chunk], template.pad_id, block_size, chunk)
        )
    return batches


def sequence_logps(
    model: nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probability of the masked (response) tokens of each row: (N,).

    ``model(idx)`` must return ``(logits, _)`` (a GPT does). input_ids (N, T), loss_mask
    (N, T - 1) as in :class:`PairBatch`: the model reads ``input_ids[:, :-1]``.
    """
    if loss_mask.shape != (input_ids.size(0), input_ids.size(1) - 1):
        raise ValueError(
            f"loss_mask must have shape {(input_ids.size(0), input_ids.size(1) - 1)} "
            f"for input_ids {tuple(input_ids.shape)}, got {tuple(loss_mask.shape)}"
        )
    logits, _ = model(input_ids[:, :-1])  # (N, T - 1, V)
    targets = input_ids[:, 1:]  # (N, T - 1)
    # log p(target) = -cross_entropy; float32 so bf16 logits do not lose the small terms.
    token_logps = -F.cross_entropy(
        logits.float().transpose(1, 2), targets, reduction="none"
    )  # (N, T - 1)
    # where, not a product: a non-finite logit at a prompt position must not leak in.
    return torch.where(loss_mask, token_logps, 0.0).sum(dim=-1)


def preference_batches_for(
    template: ChatTemplate,
    records: Sequence[Mapping[str, str]],
    config,
    block_size: int,
    *,
    shuffle: bool,
) -> list[PairBatch]:
    """``preference_batches`` with a run config's batch size and seed; FinetuneError on bad data."""
    try:
        return preference_batches(
            template,
            records,
            batch_size=config.train.batch_size,
            block_size=block_size,
            shuffle=shuffle,
            seed=config.seed,
        )
    except ValueError as error:
        raise FinetuneError(f"data: {error}") from None
