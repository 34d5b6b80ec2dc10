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
# The sampler works in float32: it computes logits / temperature, logits / penalty and
# compares cumulative probabilities with top_p. A Python float far below float32's range
# (1e-300) becomes 0 there, so the logits turn inf/NaN and multinomial raises. Above 1e-6,
# logits of any trained model stay far inside float32 (|logit| / 1e-6 / 1e-6 << 3e38).
MIN_SAMPLING_VALUE = 1e-6  # the smallest non-zero temperature, top_p, repetition_penalty
MAX_TEMPERATURE = 2.0  # as the OpenAI API
MAX_REPETITION_PENALTY = 10.0
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64: what torch.Generator.manual_seed takes


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


class RequestFailed(ServeError):
    """The engine could not go on with this one request (its sampler raised, e.g. on a
    distribution that is not finite); its rows are freed, the other requests and the
    engine carry on. Not the caller's fault once the parameters were validated."""


@dataclass
class CompletionParams:
    max_tokens: int = 16  # the OpenAI completions default
    temperature: float = 1.0  # 0 = greedy, else MIN_SAMPLING_VALUE to MAX_TEMPERATURE
    top_p: float | None = None  # MIN_SAMPLING_VALUE to 1
    top_k: int | None = None
    stop: Sequence[str] = ()
    n: int = 1  # completions of the one prompt
    seed: int | None = None  # SEED_RANGE (int64)
    repetition_penalty: float = 1.0  # MIN_SAMPLING_VALUE to MAX_REPETITION_PENALTY
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
        self._check_ranges()
        try:
            self.sampling()  # the engine's own checks, with their messages
        except ValueError as error:
            message = str(error).replace("max_new_tokens", "max_tokens")
            raise ServeError(message) from None

    def _check_ranges(self) -> None:
        """The bounds that keep the float32 sampler finite (see MIN_SAMPLING_VALUE)."""
        low = f"{MIN_SAMPLING_VALUE:g}"
        if self.temperature != 0 and not MIN_SAMPLING_VALUE <= self.temperature <= MAX_TEMPERATURE:
            raise ServeError(
                f"temperature must be 0 (greedy) or between {low} and {MAX_TEMPERATURE:g}, "
                f"got {self.temperature!r}"
            )
        if self.top_p is not None and not MIN_SAMPLING_VALUE <= self.top_p <= 1:
            raise ServeError(f"top_p must be between {low} and 1, got {self.top_p!r}")
        if not MIN_SAMPLING_VALUE <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise ServeError(
                f"repetition_penalty must be between {low} and {MAX_REPETITION_PENALTY:g}, "
                f"got {self.repetition_penalty!r}"
            )
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ServeError(
                f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]} (int64), got {self.seed}"
            )

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
