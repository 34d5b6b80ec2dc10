"""Supervised fine-tuning (SFT) on prompt/response pairs, loss on the response tokens only.

    from engine.finetune.sft import ChatTemplate, encode_records, pack_examples, sft_train
    template = ChatTemplate(tokenizer)          # needs <|user|>, <|assistant|>, end-of-text
    examples = encode_records(template, records)  # {"prompt": ..., "response": ...} dicts
    rows = pack_examples(examples, block_size=256, pad_id=template.pad_id)
    losses = sft_train(model, rows, steps=200, lr=1e-4, batch_size=8)

Chat template (the role tokens the tokenizer reserves, see engine/data/tokenizers.py)::

    [<|system|>{system}]<|user|>{prompt}<|assistant|>{response}<|endoftext|>

Labels are the next token at each position, set to ``IGNORE_INDEX`` (-100) wherever that
next token belongs to the prompt part, so only the response and its closing end-of-text
are learnt (the model learns when to stop).

Packing: short examples are laid end to end, greedily, into rows of ``block_size`` tokens;
an example never straddles two rows (one that does not fit starts a new row) and the tail
of each row is padding with ignored labels. Document boundaries: packed examples DO
attend to earlier examples of the same row (the GPT takes a padding mask only, not a
block-diagonal one) and positions run on across the row, as in pre-training on packed
documents. The loss is unaffected in kind (each example's end-of-text separates it and
prompt tokens are never targets); pass ``pack=False`` for one example per row when exact
isolation matters.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100
USER, ASSISTANT, SYSTEM, PAD = "<|user|>", "<|assistant|>", "<|system|>", "<|pad|>"


@dataclass
class Example:
    """One tokenized chat: ``ids`` and a 0/1 ``is_response`` flag per token."""

    ids: list[int]
    is_response: list[bool]


class ChatTemplate:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eot_id = tokenizer.eot_id
        self.role_ids = {role: self._special_id(role) for role in (USER, ASSISTANT)}
        self.system_id = self._special_id(SYSTEM, required=False)
        self.pad_id = self._special_id(PAD, required=False)
        if self.pad_id is None:
            self.pad_id = self.eot_id  # padding is never a target, so any id does

    def _special_id(self, token: str, required: bool = True) -> int | None:
        try:
            ids = self.tokenizer.encode(token)
        except ValueError:  # a character tokenizer that never saw '<' refuses it
            ids = []
        if len(ids) != 1:
            if required:
                raise ValueError(
                    f"the tokenizer does not reserve the chat token {token}; train it with "
                    "the default special tokens (engine.data.tokenizers.DEFAULT_SPECIAL_TOKENS)"
                )
            return None
        return ids[0]

    def encode(self, record: Mapping[str, str], index: int = 0) -> Example:
        """Tokenize one {prompt, response[, system]} record; errors name the record index."""
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise ValueError(f"record {index}: missing or empty field {key!r}")
        if record.get("system") and self.system_id is None:
            raise ValueError(f"record {index}: a system message needs the {SYSTEM} token")
        try:
            prompt = self.encode_prompt(record["prompt"], record.get("system"))
            response = self.tokenizer.encode(record["response"]) + [self.eot_id]
        except ValueError as error:  # e.g. a character the tokenizer never saw
            raise ValueError(f"record {index}: {error}") from None
        return Example(prompt + response, [False] * len(prompt) + [True] * len(response))

    def encode_prompt(self, prompt: str, system: str | None = None) -> list[int]:
        """The ids a generation starts from: everything up to and including <|assistant|>."""
        ids: list[int] = []
        if system:
            ids += [self.system_id] + self.tokenizer.encode(system)
        return (
            ids + [self.role_ids[USER]] + self.tokenizer.encode(prompt) + [self.role_ids[ASSISTANT]]
        )


def example_labels(example: Example) -> tuple[list[int], list[int]]:
    """Inputs ids[:-1] and labels ids[1:], with non-response targets set to IGNORE_INDEX."""
    inputs = example.ids[:-1]
    labels = [
        tok if is_resp else IGNORE_INDEX
        for tok, is_resp in zip(example.ids[1:], example.is_response[1:], strict=True)
    ]
    return inputs, labels


def pack_examples(
    examples: Sequence[Example], block_size: int, pad_id: int, pack: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (inputs, labels), each (N, block_size) int64; see the module docstring."""
    rows_in: list[list[int]] = []
    rows_lab: list[list[int]] = []
    for index, example in enumerate(examples):
        inputs, labels = example_labels(example)
        if len(inputs) > block_size:
            raise ValueError(
                f"record {index}: {len(example.ids)} tokens do not fit the context "
                f"(block_size {block_size} + 1)"
            )
        if pack and rows_in and len(rows_in[-1]) + len(inputs) <= block_size:
            rows_in[-1] += inputs
            rows_lab[-1] += labels
        else:
            rows_in.append(list(inputs))
            rows_lab.append(list(labels))
    if not rows_in:
        raise ValueError("no SFT examples to pack")
    for row_in, row_lab in zip(rows_in, rows_lab, strict=True):
        pad = block_size - len(row_in)
        row_in += [pad_id] * pad
        row_lab += [IGNORE_INDEX] * pad
    return torch.tensor(rows_in, dtype=torch.long), torch.tensor(rows_lab, dtype=torch.long)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled (response) positions. logits (B, T, V), labels (B, T)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def sft_train(
    model: nn.Module,
    rows: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """A plain AdamW loop over the trainable parameters (all, or the adapters under LoRA).

    Returns the loss of every step. The full trainer (checkpoints, metrics) lives in
    engine/train; this loop is the SFT objective in its smallest working form.
    """
    inputs, labels = rows
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    order = random.Random(seed)
    indices: list[int] = []
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        if len(indices) < batch_size:
            fresh = list(range(len(inputs)))
            order.shuffle(fresh)
            indices += fresh * max(1, -(-batch_size // len(fresh)))
        batch, indices = indices[:batch_size], indices[batch_size:]
        x, y = inputs[batch].to(device), labels[batch].to(device)
        logits, _ = model(x)
        loss = sft_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def encode_records(template: ChatTemplate, records: Iterable[Mapping[str, str]]) -> list[Example]:
    return [template.encode(record, index) for index, record in enumerate(records)]
