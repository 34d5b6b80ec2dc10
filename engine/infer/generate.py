"""Text generation with a KV cache: batched prompts, sampling controls, stop sequences, streaming.

    generator = Generator(model, tokenizer)
    result = generator.generate(["ROMEO:", "To be, or"], SamplingParams(max_new_tokens=100,
                                temperature=0.8, top_k=40, stop=["\\n\\n"], seed=1))
    result.generations[0].text, result.tokens_per_second
    for event in generator.stream("ROMEO:", SamplingParams(max_new_tokens=100)):
        print(event.text, end="", flush=True)

Prompts of different lengths are left-padded into one batch; the attention mask keeps
padding out of attention and positions count real tokens only, so each prompt is continued
exactly as it would be alone. Prefill runs the prompts once, then each step feeds one token
per row through the cache. Rows that finish (stop sequence, end-of-text, max tokens) leave
the batch. ``use_cache=False`` recomputes the whole sequence every step (the reference).
Completions may run past the model's context: from there on each step sees the last
``block_size`` tokens (as nanoGPT's ``generate``), recomputed, since learned positions shift.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from engine.models.gpt import GPT, KVCache


class SamplingError(ValueError):
    """An out-of-range sampling parameter; the message names it."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # nucleus: the smallest set with probability >= top_p
    repetition_penalty: float = (
        1.0  # > 1 discourages tokens already in the text (CTRL, Keskar 2019)
    )
    stop: Sequence[str] = ()  # the completion ends before the first of these strings
    stop_at_eot: bool = True  # end-of-text ends a completion
    seed: int | None = None  # same seed, same prompts -> same samples

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise SamplingError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise SamplingError(
                f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}"
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SamplingError(
                f"stop sequences must be non-empty strings, got {list(self.stop)!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Generation:
    prompt: str
    text: str  # the completion, without the prompt and without the stop sequence
    token_ids: list[int]  # completion tokens (up to and including a stop)
    prompt_tokens: int
    finish_reason: str  # "length" | "stop" | "eot"

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class GenerationResult:
    generations: list[Generation]
    prefill_seconds: float  # time to the first new token of every row
    total_seconds: float
    steps: int  # forward passes after prefill
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.generations)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)

    @property
    def tokens_per_second(self) -> float:
        """New tokens of all rows per second of wall time (prefill included)."""
        return self.completion_tokens / max(self.total_seconds, 1e-9)


@dataclass
class StreamEvent:
    index: int  # which prompt
    token_id: int
    text: str  # new text that is safe to show (held back while it could start a stop sequence)
    finished: bool = False
    finish_reason: str | None = None


class _Row:
    """Book-keeping of one prompt's completion."""

    def __init__(self, index: int, prompt: str, prompt_ids: list[int]):
        self.index = index
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of text already streamed
        self.finish_reason: str | None = None


class Generator:
    def __init__(self, model: GPT, tokenizer, device: torch.device | str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.dtype = next(model.parameters()).dtype
        if tokenizer.vocab_size > model.config.vocab_size:
            raise SamplingError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
                f"{model.config.vocab_size}; they do not belong together"
            )

    # -- public --------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | Sequence[str],
        params: SamplingParams | None = None,
        *,
        use_cache: bool = True,
    ) -> GenerationResult:
        params = params or SamplingParams()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        started = time.perf_counter()
        rows = self._rows(prompts, params)
        timings: dict[str, float] = {}
        for _event in self._run(rows, params, use_cache, timings, stream=False):
            pass
        steps = int(timings.get("steps", 0))
        total = time.perf_counter() - started
        return GenerationResult(
            generations=[
                Generation(r.prompt, r.text, r.ids, len(r.prompt_ids), r.finish_reason or "length")
                for r in rows
            ],
            prefill_seconds=timings.get("prefill_seconds", 0.0),
            total_seconds=total,
            steps=steps,
            timings=timings,
        )

    def stream(
        self,
        prompts: str | Sequence[str],
        params: SamplingParams | None = None,
        *,
        use_cache: bool = True,
    ) -> Iterator[StreamEvent]:
        """Yield each new token of each row as soon as it is sampled."""
        params = params or SamplingParams()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = self._rows(prompts, params)
        yield from self._run(rows, params, use_cache, {}, stream=True)

    # -- internals -----------------------------------------------------------------------
    def _rows(self, prompts: list[str], params: SamplingParams) -> list[_Row]:
        if not prompts:
            raise SamplingError("no prompts given")
        rows = []
        for index, prompt in enumerate(prompts):
            ids = self.tokenizer.encode(prompt) if prompt else []
            if not ids:  # an empty prompt starts a new document
                ids = [self.tokenizer.eot_id]
            rows.append(_Row(index, prompt, ids))
        longest = max(len(r.prompt_ids) for r in rows)
        block = self.model.config.block_size
        if longest > block:
            raise SamplingError(
                f"a prompt of {longest} tokens is longer than the model's context of {block} "
                "tokens; shorten it"
            )
        return rows

    @torch.inference_mode()
    def _run(
        self, rows: list[_Row], params: SamplingParams, use_cache: bool, timings: dict, stream: bool
    ) -> Iterator[StreamEvent]:
        started = time.perf_counter()
        device = self.device
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        B = len(rows)
        longest = max(len(r.prompt_ids) for r in rows)
        tokens, mask = _left_padded(rows, longest, self.tokenizer.eot_id, device)
        padded = not bool(mask.all())
        active = list(range(B))  # rows still generating, in batch order
        window = self.model.config.block_size
        # The cache holds up to a full context; past it, each step conditions on the last
        # `window` tokens (nanoGPT's crop), which with learned positions means recomputing.
        cache_len = min(longest + params.max_new_tokens, window)
        cache = KVCache(self.model.config, B, cache_len, device, self.dtype) if use_cache else None
        # Tokens seen by each row (prompt + completion) for the repetition penalty.
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros((B, self.model.config.vocab_size), dtype=torch.bool, device=device)
            batch_rows = torch.arange(B, device=device)[:, None].expand_as(tokens)
            seen[batch_rows[mask], tokens[mask]] = True
        logits, _ = self.model(
            tokens, cache=cache, attention_mask=mask if padded else None, last_only=True
        )
        steps = 0
        while True:
            next_ids = self._sample(
                logits[:, -1, :].float(), seen, params, generator
            )  # (B_active,)
            if steps == 0:
                timings["prefill_seconds"] = time.perf_counter() - started
            finished_now = []
            for position, token in enumerate(next_ids.tolist()):
                row = rows[active[position]]
                event = self._advance(row, token, params, stream)
                if row.finish_reason is not None:
                    finished_now.append(position)
                if event is not None:
                    yield event
            steps += 1
            if len(finished_now) == len(active):
                break
            if seen is not None:
                seen[torch.arange(len(active), device=device), next_ids] = True
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(next_ids[:, None], dtype=torch.bool)], dim=1)
            if finished_now:  # shrink the batch: finished rows cost nothing from here on
                keep = [p for p in range(len(active)) if p not in set(finished_now)]
                keep_index = torch.tensor(keep, device=device)
                active = [active[p] for p in keep]
                tokens, mask = tokens.index_select(0, keep_index), mask.index_select(0, keep_index)
                if seen is not None:
                    seen = seen.index_select(0, keep_index)
                if cache is not None:
                    cache.select(keep_index)
                padded = not bool(mask.all())
            if cache is not None and cache.length < cache.max_len:
                logits, _ = self.model(
                    tokens[:, -1:],
                    cache=cache,
                    attention_mask=mask if padded else None,
                    last_only=True,
                )
            else:
                cache = None
                tokens, mask = tokens[:, -window:], mask[:, -window:]
                padded = not bool(mask.all())
                logits, _ = self.model(
                    tokens, attention_mask=mask if padded else None, last_only=True
                )
        timings["steps"] = steps
        timings["total_seconds"] = time.perf_counter() - started

    def _advance(
        self, row: _Row, token: int, params: SamplingParams, stream: bool
    ) -> StreamEvent | None:
        row.ids.append(token)
        if params.stop_at_eot and token == self.tokenizer.eot_id:
            row.finish_reason = "eot"
        elif len(row.ids) >= params.max_new_tokens:
            row.finish_reason = "length"
        text_ids = row.ids[:-1] if row.finish_reason == "eot" else row.ids
        if params.stop or stream or row.finish_reason is not None:
            row.text = self.tokenizer.decode(text_ids)
        if params.stop:
            cut = min((i for i in (row.text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                row.text = row.text[:cut]
                row.finish_reason = "stop"
        if not stream:
            return None
        safe = len(row.text)
        if row.finish_reason is None and params.stop:
            # Hold back a tail that may still grow into a stop sequence.
            for stop in params.stop:
                for k in range(min(len(stop) - 1, len(row.text)), 0, -1):
                    if row.text.endswith(stop[:k]):
                        safe = min(safe, len(row.text) - k)
                        break
        if self.tokenizer.decode([token]) == "\ufffd" and row.finish_reason is None:
            safe = min(safe, row.emitted)  # half of a multi-byte character: wait for the rest
        delta = row.text[row.emitted : safe]
        row.emitted = max(row.emitted, safe)
        return StreamEvent(
            row.index, token, delta, row.finish_reason is not None, row.finish_reason
        )

    @staticmethod
    def _sample(
        logits: torch.Tensor,
        seen: torch.Tensor | None,
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """logits (B, V) -> next token ids (B,)."""
        logits = Generator._penalised(logits, seen, params)
        if params.greedy:
            return logits.argmax(dim=-1)
        probs = Generator._probabilities(logits, params)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    @staticmethod
    def _penalised(
        logits: torch.Tensor, seen: torch.Tensor | None, params: SamplingParams
    ) -> torch.Tensor:
        """The repetition penalty on the tokens already seen (CTRL, Keskar 2019): (B, V)."""
        if seen is None:
            return logits
        penalty = params.repetition_penalty
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        return torch.where(seen, penalised, logits)

    @staticmethod
    def _probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """Temperature, top-k and top-p over (penalised) logits (B, V) -> probabilities (B, V)."""
        logits = logits / params.temperature
        if params.top_k is not None and params.top_k < logits.size(-1):
            kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if params.top_p is not None and params.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # Drop a token when the tokens before it already reach top_p (the first always stays).
            drop = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return logits.softmax(dim=-1)


def _left_padded(
    rows: list[_Row], longest: int, pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in (B, longest) ids, and the mask of the real (non-pad) ones."""
    tokens = torch.full((len(rows), longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        n = len(row.prompt_ids)
        tokens[i, longest - n :] = torch.tensor(row.prompt_ids, device=device)
        mask[i, longest - n :] = True
    return tokens, mask
