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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.finetune.objective import BatchOrder, FinetuneError, Objective, train_objective

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


class SFTObjective(Objective):
    """Cross-entropy on the response tokens of packed rows (the sft, lora and qlora kinds)."""

    def __init__(
        self,
        model: nn.Module,
        rows: tuple[torch.Tensor, torch.Tensor],
        eval_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        batch_size: int,
        eval_batches: int = 0,
        device: torch.device | None = None,
    ):
        self.module, self.rows, self.eval_rows = model, rows, eval_rows
        self.batch_size, self.eval_batches = batch_size, eval_batches
        self.device = device if device is not None else next(model.parameters()).device

    @classmethod
    def from_records(cls, model, template, train, heldout, config, device) -> SFTObjective:
        block = model.config.block_size
        try:
            examples = encode_records(template, train)
            rows = pack_examples(examples, block, template.pad_id, pack=config.data.pack)
            held = encode_records(template, heldout)
            eval_rows = pack_examples(held, block, template.pad_id, pack=False)
        except ValueError as error:
            raise FinetuneError(f"data: {error}") from None
        return cls(
            model,
            rows,
            eval_rows,
            batch_size=config.train.batch_size,
            eval_batches=config.train.eval_batches,
            device=device,
        )

    def _batch_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, _ = self.module(inputs.to(self.device))
        return sft_loss(logits, labels.to(self.device))

    def loss(self, pick: BatchOrder) -> tuple[torch.Tensor, dict[str, float]]:
        index = pick(len(self.rows[0]), self.batch_size)
        loss = self._batch_loss(self.rows[0][index], self.rows[1][index])
        return loss, {"train/loss": loss.item()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        inputs, labels = self.eval_rows
        size = self.batch_size
        losses = []
        for start in range(0, min(len(inputs), size * self.eval_batches), size):
            batch = slice(start, start + size)
            losses.append(self._batch_loss(inputs[batch], labels[batch]).item())
        return {"eval/loss": sum(losses) / len(losses)}


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
    """The SFT objective in its smallest loop (no checkpoints, no schedule): every step's loss.

    The full run (checkpoints, metrics, outputs) is ``engine.finetune.run``.
    """
    objective = SFTObjective(model, rows, batch_size=batch_size)
    history = train_objective(objective, steps=steps, lr=lr, weight_decay=weight_decay, seed=seed)
    return [metrics["train/loss"] for metrics in history]


def encode_records(template: ChatTemplate, records: Iterable[Mapping[str, str]]) -> list[Example]:
    return [template.encode(record, index) for index, record in enumerate(records)]
