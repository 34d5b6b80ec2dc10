"""A continuous-batching text engine: one decode loop (a thread) per loaded model.

    engine = TextEngine(model, tokenizer, max_batch=32, max_queue=64).start()
    request = engine.submit("ROMEO:", CompletionParams(max_tokens=64, temperature=0.8, seed=1))
    for delta in request:                    # streamed as the tokens are sampled
        print(delta.text, end="")
    result = request.result()                # choices, finish reasons, token counts, timings
    engine.stop()

``submit`` tokenizes and checks the request in the caller's thread (a bad request raises
:class:`ServeError` at once) and puts it on a bounded queue: a full queue raises
:class:`QueueFull` with a retry-after estimate; it never blocks. At every step the loop
admits waiting requests while slots are free (their prompts are prefilled together, then
their rows join the batched :class:`SlotCache`), feeds every running row one token, samples,
streams the deltas, and frees at once the rows that finished (stop string, end-of-text,
max_tokens) or whose request was cancelled. A request whose sampler fails (a row's
distribution is not finite, or its seed is refused) fails alone with RequestFailed; only a
failing forward pass, which every row shares, stops the engine. See docs/engine-serving.md.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from engine.infer.generate import Generator, _Row
from engine.models.gpt import GPT, KVCache
from engine.serve.cache import SlotCache
from engine.serve.params import (
    Cancelled,
    CompletionParams,
    EngineStopped,
    PromptTooLong,
    QueueFull,
    RequestFailed,
    ServeError,
)


@dataclass
class Delta:
    """New text of one completion (``index``), safe to show (stop-string tails held back)."""

    index: int
    text: str
    token_id: int
    finish_reason: str | None = None  # set on the completion's last delta


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str  # "stop" (stop string or end-of-text) | "length"
    token_ids: list[int]


@dataclass
class Timings:
    queue_seconds: float = 0.0  # submitted -> admitted into the batch
    prefill_seconds: float = 0.0  # the prompt's forward pass and first sample
    decode_seconds: float = 0.0  # first token -> last token
    first_token_seconds: float = 0.0  # submitted -> first token (time to first token)
    total_seconds: float = 0.0  # submitted -> finished

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class CompletionResult:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    truncated_tokens: int = 0  # prompt tokens dropped on the left (truncate=True)

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason


_DONE = object()
log = logging.getLogger(__name__)


class Request:
    """A submitted request: iterate it for :class:`Delta` s, ``result()`` for the final record."""

    def __init__(self, prompt_ids: list[int], params: CompletionParams, truncated: int):
        self.prompt_ids = prompt_ids
        self.params = params
        self.sampling = params.sampling()  # checked once, read at every step
        self.truncated = truncated
        self.submitted = time.perf_counter()
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.prefill_seconds = 0.0
        self.finished_at: float | None = None
        self.rows: list[_Row] = []  # one per completion (n)
        self.open_rows = 0
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: list[Delta] = []
        self._flushed = float("-inf")  # the first delta goes out at once
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._result: CompletionResult | None = None
        self.failure: RequestFailed | None = None  # set by the loop: the request fails alone

    # -- client side --------------------------------------------------------------------
    def cancel(self) -> None:
        """The client went away: the loop frees the request's rows at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __iter__(self) -> Iterator[Delta]:
        while True:
            event = self._events.get()
            if event is _DONE:
                self._events.put(_DONE)  # a second iteration ends at once too
                if self._error is not None:
                    raise self._error
                return
            yield from event  # a batch of deltas (see TextEngine.stream_interval)

    def result(self, timeout: float | None = None) -> CompletionResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    # -- engine side --------------------------------------------------------------------
    def _emit(self, delta: Delta, now: float, interval: float) -> None:
        """Buffer a delta; hand the buffer to the client when ``interval`` seconds have
        passed since the last hand-over (the first token and a completion's end at once)."""
        self._pending.append(delta)
        if delta.finish_reason is not None or now - self._flushed >= interval:
            self._flush(now)

    def _flush(self, now: float) -> None:
        if self._pending:
            self._events.put(self._pending)
            self._pending = []
        self._flushed = now

    def _finish(self, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        now = time.perf_counter()
        self.finished_at = now
        if error is None:
            first = self.first_token or now
            timings = Timings(
                queue_seconds=(self.admitted or now) - self.submitted,
                prefill_seconds=self.prefill_seconds,
                decode_seconds=now - first,
                first_token_seconds=first - self.submitted,
                total_seconds=now - self.submitted,
            )
            choices = [
                Choice(r.index, r.text, _finish_reason(r.finish_reason), list(r.ids))
                for r in self.rows
            ]
            self._result = CompletionResult(
                choices=choices,
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=sum(len(r.ids) for r in self.rows),
                timings=timings,
                truncated_tokens=self.truncated,
            )
        else:
            self._error = error
        self._flush(now)
        self._done.set()
        self._events.put(_DONE)


def _finish_reason(reason: str | None) -> str:
    return "length" if reason in (None, "length") else "stop"  # "eot" is a stop, as OpenAI


class _Slot:
    """A running row: which request and completion, its sampler state, its next input."""

    __slots__ = ("request", "row", "generator", "seen", "pending")

    def __init__(self, request: Request, row: _Row, generator, seen):
        self.request = request
        self.row = row
        self.generator = generator
        self.seen = seen
        self.pending = 0  # the last sampled token, fed at the next step


def completion_seed(seed: int, index: int) -> int:
    """The seed of completion ``index`` of a seeded request (completion 0 uses ``seed``
    itself, so a one-completion request samples as ``Generator`` does with that seed)."""
    return seed if index == 0 else hash((seed, index)) & 0x7FFF_FFFF_FFFF_FFFF


class TextEngine:
    def __init__(
        self,
        model: GPT,
        tokenizer,
        *,
        max_batch: int = 32,
        max_queue: int = 64,
        max_prefill_tokens: int = 2048,
        stream_interval: float = 0.02,
        device: torch.device | str | None = None,
        cache_headroom: int | None = None,
        name: str = "engine",
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.generator = Generator(model, tokenizer, device)  # its checks, sampler and stops
        self.model = self.generator.model
        self.tokenizer = tokenizer
        self.device = self.generator.device
        self.config = model.config
        self.block_size = model.config.block_size
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        # Streamed deltas reach a client at most every `stream_interval` seconds (the
        # first token and a completion's end at once): a client thread woken at every
        # token costs the decode loop a GIL hand-over, which on a busy CPU is a wait for
        # the scheduler. 20 ms is 50 updates a second, smoother than anyone reads.
        self.stream_interval = stream_interval
        self.name = name
        self._cache_headroom = cache_headroom
        self._queue: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self._slots: list[_Slot] = []
        self._admitting: list[Request] = []
        self._cache: SlotCache | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._draining = threading.Event()
        # Held while a request goes onto the queue and while the engine starts draining or
        # empties the queue for good: no request can slip in after the last drain.
        self._gate = threading.Lock()
        self._failure: BaseException | None = None
        self._wakeup = threading.Event()
        self._recent: deque[float] = deque(maxlen=32)  # durations of finished requests
        self.stats = {"steps": 0, "tokens": 0, "requests": 0, "prefills": 0}

    @classmethod
    def from_checkpoint(
        cls, path, device: str | None = None, tokenizer_path=None, **options
    ) -> TextEngine:
        """An engine (not started) for a run folder, a checkpoint or an export folder, as
        ``python -m engine generate`` loads them (engine.infer.loading)."""
        from engine.infer.loading import load_for_generation

        model, tokenizer = load_for_generation(path, tokenizer_path)
        if device is not None:
            model = model.to(device)
        return cls(model, tokenizer, device=device, **options)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, thread: bool = True) -> TextEngine:
        """Start the decode loop thread; ``thread=False`` instead leaves the loop to the
        caller's :meth:`step` calls (deterministic tests, single-threaded batch jobs)."""
        if self._thread is not None or self._cache is not None:
            return self
        self._cache = SlotCache(
            self.config, self.max_batch, self.device, self.generator.dtype, self._cache_headroom
        )
        if not thread:
            return self
        self._thread = threading.Thread(target=self._loop, name=f"serve-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0, drain: bool = False) -> None:
        """Stop the engine. ``drain=False``: requests still queued or running fail with
        EngineStopped. ``drain=True``: refuse new requests but finish the queued and running
        ones first (a model switch that drops nothing in flight), waiting up to ``timeout``."""
        with self._gate:
            self._draining.set()
        if not drain:
            self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # the drain outlived the timeout: stop hard
                self._stopping.set()
                self._wakeup.set()
                self._thread.join(timeout)
        elif drain:  # no loop thread: the caller's thread drains
            while not self._stopping.is_set() and self._iteration():
                pass
        self._stopping.set()
        if self._thread is None:
            self._fail_all(EngineStopped("the engine stopped"))

    def __enter__(self) -> TextEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        if self._draining.is_set() or self._cache is None:
            return False
        return self._thread is None or self._thread.is_alive()

    def step(self) -> bool:
        """One loop iteration in the caller's thread (only without the loop thread): admit
        what fits, then decode one token for every row. False when there was nothing to do."""
        if self._thread is not None:
            raise RuntimeError("the engine runs its own loop thread; step() is for thread=False")
        if self._cache is None:
            raise EngineStopped("the engine is not started")
        return self._iteration()

    @torch.inference_mode()
    def _iteration(self) -> bool:
        self._drop_cancelled()
        self._admit()
        if not self._slots:
            return False
        self._step()
        return True

    @property
    def load(self) -> dict[str, int]:
        return {"running": len(self._slots), "waiting": self._queue.qsize()}

    def health(self) -> dict:
        """What a replica's health check reports: up or not (and why), load, counters."""
        failure = self._failure
        return {
            "up": self.running,
            "error": None if failure is None else repr(failure),
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            **self.load,
            **self.stats,
        }

    # -- requests -----------------------------------------------------------------------
    def prepare(
        self, prompt: str | Sequence[int], params: CompletionParams
    ) -> tuple[list[int], int]:
        """Prompt ids (left-truncated when asked) and how many were dropped; ServeError if
        the prompt does not fit the context."""
        if isinstance(prompt, str):
            try:
                ids = self.tokenizer.encode(prompt) if prompt else []
            except ValueError as error:  # e.g. a character a char tokenizer never saw
                raise ServeError(f"prompt: {error}") from None
        else:
            ids = [int(i) for i in prompt]
            vocab = self.tokenizer.vocab_size
            if any(not 0 <= i < vocab for i in ids):
                raise ServeError(f"prompt: token ids must be in [0, {vocab})")
        if not ids:  # an empty prompt starts a new document
            ids = [self.tokenizer.eot_id]
        if params.max_tokens >= self.block_size:
            raise ServeError(
                f"max_tokens ({params.max_tokens}) must be less than the model's context of "
                f"{self.block_size} tokens"
            )
        room = self.block_size - params.max_tokens
        if len(ids) <= room:
            return ids, 0
        if params.truncate:
            return ids[-room:], len(ids) - room
        raise PromptTooLong(
            f"this model's context is {self.block_size} tokens; the prompt has {len(ids)} "
            f"and max_tokens asks for {params.max_tokens} more ({len(ids) + params.max_tokens} "
            "in all): shorten the prompt, lower max_tokens, or ask for truncation",
            self.block_size,
            len(ids),
            params.max_tokens,
        )

    def submit(
        self, prompt: str | Sequence[int], params: CompletionParams | None = None
    ) -> Request:
        """Queue a request; raises ServeError (bad input), QueueFull, or EngineStopped."""
        params = params or CompletionParams()
        params.validate()  # again: the fields may have changed since the params were made
        if params.n > self.max_batch:
            raise ServeError(f"n ({params.n}) is more than this engine's batch of {self.max_batch}")
        ids, truncated = self.prepare(prompt, params)
        request = Request(ids, params, truncated)
        with self._gate:
            if self._failure is not None:
                raise EngineStopped(f"the decode loop failed: {self._failure}")
            if not self.running:
                raise EngineStopped("the engine is not running")
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                raise QueueFull(self.max_queue, self.retry_after()) from None
        self._wakeup.set()
        return request

    def complete(
        self, prompt: str | Sequence[int], params: CompletionParams | None = None
    ) -> CompletionResult:
        """Submit and wait (a convenience for tests and batch callers)."""
        return self.submit(prompt, params).result()

    def retry_after(self) -> float:
        """Seconds until a queue slot is likely free: the waiting requests drain
        ``max_batch`` at a time, each batch taking about a recent request's duration."""
        typical = sorted(self._recent)[len(self._recent) // 2] if self._recent else 1.0
        batches = (self._queue.qsize() + len(self._slots)) / self.max_batch
        return max(1.0, batches * typical)

    # -- the decode loop ----------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._iteration():
                    if self._draining.is_set() and self._queue.empty():
                        break  # drained
                    self._wakeup.wait(0.05)
                    self._wakeup.clear()
        except BaseException as error:  # noqa: BLE001 - every request must hear of it
            with self._gate:
                self._failure = error
                self._draining.set()
            self._fail_all(EngineStopped(f"the decode loop failed: {error!r}"))
            log.exception("serving engine %s: the decode loop failed", self.name)
            return
        with self._gate:
            self._draining.set()
        self._fail_all(EngineStopped("the engine stopped"))

    def _fail_all(self, error: BaseException) -> None:
        for request in self._admitting:
            request._finish(error)
        self._admitting = []
        for slot in self._slots:
            slot.request._finish(error)
        self._slots.clear()
        if self._cache is not None:
            self._cache.clear()
        self._drain(error)

    def _drain(self, error: BaseException) -> None:
        while True:
            try:
                self._queue.get_nowait()._finish(error)
            except queue.Empty:
                return

    def _drop_cancelled(self) -> None:
        for position in range(len(self._slots) - 1, -1, -1):
            if self._slots[position].request.cancelled:
                self._release(position)

    def _release(self, position: int) -> None:
        """Free a row; the last row moves into its place in the cache and the slot list."""
        slot = self._slots[position]
        request = slot.request
        assert self._cache is not None
        moved = self._cache.remove(position)
        if moved is not None:
            self._slots[position] = self._slots[moved]
        self._slots.pop()
        request.open_rows -= 1
        if request.open_rows == 0:
            if request.failure is not None:
                request._finish(request.failure)
            elif request.cancelled and any(r.finish_reason is None for r in request.rows):
                request._finish(Cancelled("the request was cancelled"))
            else:
                request._finish()
                self._recent.append(request.finished_at - request.submitted)
                self.stats["requests"] += 1

    def _admit(self) -> None:
        """Take waiting requests while their rows fit; prefill them together; join them."""
        assert self._cache is not None
        joining: list[Request] = []
        free = self._cache.free
        longest = 0
        while True:
            try:
                request = self._queue.queue[0] if self._queue.qsize() else None
            except IndexError:
                request = None
            if request is None:
                break
            if request.cancelled:
                self._queue.get_nowait()._finish(Cancelled("the request was cancelled"))
                continue
            if request.params.n > free:
                break
            # The prefill runs a left-padded batch: it costs rows x the longest prompt.
            wider = max(longest, len(request.prompt_ids))
            if joining and (len(joining) + 1) * wider > self.max_prefill_tokens:
                break
            self._queue.get_nowait()
            joining.append(request)
            free -= request.params.n
            longest = wider
        if joining:
            self._admitting = joining  # off the queue, not yet in a slot
            self._prefill(joining)
            self._admitting = []

    def _prefill(self, requests: list[Request]) -> None:
        started = time.perf_counter()
        for request in requests:
            request.admitted = started
        longest = max(len(r.prompt_ids) for r in requests)
        batch = len(requests)
        eot = self.tokenizer.eot_id
        tokens = torch.full((batch, longest), eot, dtype=torch.long)
        mask = torch.zeros((batch, longest), dtype=torch.bool)
        for i, request in enumerate(requests):
            n = len(request.prompt_ids)
            tokens[i, longest - n :] = torch.tensor(request.prompt_ids)
            mask[i, longest - n :] = True
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        padded = not bool(mask.all())
        prefill = KVCache(self.config, batch, longest, self.device, self.generator.dtype)
        logits, _ = self.model(
            tokens, cache=prefill, attention_mask=mask if padded else None, last_only=True
        )
        logits = logits[:, -1, :].float()
        self.stats["prefills"] += 1
        assert self._cache is not None
        new_slots: list[tuple[int, _Slot]] = []
        for i, request in enumerate(requests):
            params = request.params
            try:
                states = [self._sampler_state(request, index) for index in range(params.n)]
            except Exception as error:  # noqa: BLE001 - this request's fault, not the engine's
                request._finish(self._request_failed(request, error))
                continue
            positions = self._cache.add(prefill, i, len(request.prompt_ids), copies=params.n)
            for index, ((generator, seen), position) in enumerate(
                zip(states, positions, strict=True)
            ):
                row = _Row(index, "", request.prompt_ids)
                slot = _Slot(request, row, generator, seen)
                request.rows.append(row)
                self._slots.append(slot)
                assert len(self._slots) - 1 == position
                new_slots.append((i, slot))
            request.open_rows = params.n
        if not new_slots:
            return
        # The first token of each new row, from its prompt's last logits.
        rows_logits = logits.index_select(
            0, torch.tensor([i for i, _ in new_slots], device=logits.device)
        )
        first = len(self._slots) - len(new_slots)
        self._sample_and_advance(rows_logits, first)

    def _sampler_state(self, request: Request, index: int):
        """Completion ``index``'s own random generator (seeded requests) and the mask of the
        tokens it has seen (repetition penalty)."""
        params = request.params
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(
                completion_seed(params.seed, index)
            )
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros((1, self.config.vocab_size), dtype=torch.bool, device=self.device)
            seen[0, torch.tensor(request.prompt_ids, device=self.device)] = True
        return generator, seen

    @staticmethod
    def _sample_row(logits: torch.Tensor, slot: _Slot) -> int:
        """One row's next token (logits (1, V)), as ``Generator._sample`` draws it; a
        ValueError when the row's distribution is not finite. multinomial never sees such a
        distribution: on CUDA it checks with a device-side assert, which would lose the
        process's CUDA context (every request, not this one); the row samples a placeholder
        instead, read back with the verdict in one transfer, and is dropped."""
        params = slot.request.sampling
        logits = Generator._penalised(logits, slot.seen, params)
        if params.greedy:  # a greedy row with a repetition penalty
            finite = torch.isfinite(logits).all(dim=-1)  # (1,)
            token = logits.argmax(dim=-1)
        else:
            probs = Generator._probabilities(logits, params)
            finite = torch.isfinite(probs).all(dim=-1)  # softmax: NaN from any inf
            probs = torch.where(finite[:, None], probs, 1.0)
            token = torch.multinomial(probs, 1, generator=slot.generator).squeeze(-1)
        token_id, ok = torch.stack([token, finite.long()]).view(-1).tolist()
        if not ok:
            raise ValueError(
                "the next-token distribution is not finite (temperature, top_p or "
                "repetition_penalty too small for float32?)"
            )
        return token_id

    def _request_failed(self, request: Request, error: BaseException) -> RequestFailed:
        params = request.params
        log.warning(
            "serving engine %s: a request failed alone (temperature=%r top_p=%r top_k=%r "
            "repetition_penalty=%r seed=%r)",
            self.name,
            params.temperature,
            params.top_p,
            params.top_k,
            params.repetition_penalty,
            params.seed,
            exc_info=error,
        )
        return RequestFailed(f"sampling failed for this request: {error}")

    def _step(self) -> None:
        """One token for every running row."""
        cache = self._cache
        assert cache is not None
        ids = torch.tensor([[s.pending] for s in self._slots], device=self.device)
        uniform = cache.uniform()
        mask = cache.step_mask()
        logits, _ = self.model(
            ids, cache=cache, attention_mask=None if uniform else mask, last_only=True
        )
        cache.advance()
        self.stats["steps"] += 1
        self._sample_and_advance(logits[:, -1, :].float(), 0)

    def _sample_and_advance(self, logits: torch.Tensor, first: int) -> None:
        """Sample one token for rows ``first ..`` (logits row i -> slot first + i), stream
        the deltas, and release the rows that finished."""
        slots = self._slots[first : first + logits.size(0)]
        greedy = [i for i, s in enumerate(slots) if s.request.params.greedy and s.seen is None]
        tokens: list[int] = [0] * len(slots)
        if greedy:
            if len(greedy) == len(slots):
                picked = logits.argmax(dim=-1).tolist()
            else:
                index = torch.tensor(greedy, device=logits.device)
                picked = logits.index_select(0, index).argmax(dim=-1).tolist()
            for i, token in zip(greedy, picked, strict=True):
                tokens[i] = token
        # A row whose sampling fails fails its request alone: its rows are freed below.
        failed: dict[Request, RequestFailed] = {}
        if len(greedy) < len(slots):
            chosen = set(greedy)
            for i, slot in enumerate(slots):
                if i in chosen or slot.request in failed:
                    continue
                try:
                    tokens[i] = self._sample_row(logits[i : i + 1], slot)
                except Exception as error:  # noqa: BLE001 - the row's request fails alone
                    failed[slot.request] = self._request_failed(slot.request, error)
        finished: set[int] = set()
        now = time.perf_counter()
        for i, (slot, token) in enumerate(zip(slots, tokens, strict=True)):
            request = slot.request
            if request.first_token is None:  # the prefill's sample: its first token
                request.first_token = now
                request.prefill_seconds = now - (request.admitted or now)
            if request.cancelled or request in failed:
                finished.add(first + i)
                continue
            try:
                event = self.generator._advance(slot.row, token, request.sampling, stream=True)
            except Exception as error:  # noqa: BLE001 - e.g. a token its tokenizer cannot decode
                failed[request] = self._request_failed(request, error)
                finished.add(first + i)
                continue
            slot.pending = token
            if slot.seen is not None:
                slot.seen[0, token] = True
            self.stats["tokens"] += 1
            if event is not None and (event.text or event.finished):
                delta = Delta(slot.row.index, event.text, token, _reason(event))
                request._emit(delta, now, self.stream_interval)
            if slot.row.finish_reason is not None:
                finished.add(first + i)
        for request, failure in failed.items():
            request.failure = failure
        # A failed request's rows that went before the failure in this loop leave as well.
        finished.update(first + i for i, s in enumerate(slots) if s.request in failed)
        for position in sorted(finished, reverse=True):
            self._release(position)


def _reason(event) -> str | None:
    return _finish_reason(event.finish_reason) if event.finished else None
