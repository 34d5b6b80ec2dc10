"""Per-request parameters of the serving engine and the errors it raises.

Field names follow the OpenAI completions API (``max_tokens``, ``top_p``, ``stop``, ``n``,
``seed``) so the HTTP layer maps a request body onto :class:`CompletionParams` one to one.
Every error is a :class:`ServeError` whose message names the field or limit at fault; the
HTTP layer turns :class:`QueueFull` into 429 + ``Retry-After`` and the others into 400/503.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.infer.generate import SamplingParams

MAX_STOP_SEQUENCES = 4  # as the OpenAI API
MAX_N = 16


class ServeError(ValueError):
    """A request the engine refuses; the message says which field or limit, and why."""


class PromptTooLong(ServeError):
    """Prompt + max_tokens exceed the model's context (and truncation was not asked for)."""

    def __init__(self, message: str, limit: int, prompt_tokens: int, max_tokens: int):
        super().__init__(message)
        self.limit = limit
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens


class QueueFull(ServeError):
    """The waiting queue is at capacity; ``retry_after`` (seconds) estimates when to come back."""

    def __init__(self, capacity: int, retry_after: float):
        self.capacity = capacity
        self.retry_after = retry_after
        super().__init__(
            f"the request queue is full ({capacity} waiting); retry in about "
            f"{math.ceil(retry_after)} s"
        )


class EngineStopped(ServeError):
    """The engine is not running (never started, stopping, or its decode loop failed)."""


class Cancelled(ServeError):
    """The request was cancelled before it finished (its client went away)."""


@dataclass
class CompletionParams:
    max_tokens: int = 16  # the OpenAI completions default
    temperature: float = 1.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None
    stop: Sequence[str] = ()
    n: int = 1  # completions of the one prompt
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop_at_eot: bool = True  # end-of-text ends a completion (finish_reason "stop")
    truncate: bool = False  # drop the prompt's oldest tokens to fit instead of refusing

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.stop is None:
            self.stop = []
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list | tuple):
            raise ServeError(f"stop must be a string or a list of strings, got {self.stop!r}")
        self.stop = list(self.stop)
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise ServeError(f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(self.stop)}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            raise ServeError(f"n must be an integer in [1, {MAX_N}], got {self.n!r}")
        integers = ("max_tokens", "top_k", "seed")
        optional = ("top_k", "seed", "top_p")
        for name in integers + ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            kinds = int if name in integers else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                kind = "an integer" if name in integers else "a number"
                raise ServeError(f"{name} must be {kind}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ServeError(f"{name} must be a finite number, got {value!r}")
        try:
            self.sampling()  # the engine's own checks, with their messages
        except ValueError as error:
            message = str(error).replace("max_new_tokens", "max_tokens")
            raise ServeError(message) from None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sampling(self) -> SamplingParams:
        """The same choices as :class:`engine.infer.generate.SamplingParams`."""
        return SamplingParams(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(self.stop),
            stop_at_eot=self.stop_at_eot,
            seed=self.seed,
        )
