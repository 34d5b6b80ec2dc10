"""Serving engine: continuous-batching text generation, digit images, the chat template.

Pure torch + stdlib; the HTTP endpoints and serve workers sit on top of it.
See docs/engine-serving.md.
"""

from engine.serve.engine import (
    Choice,
    CompletionResult,
    Delta,
    Request,
    TextEngine,
    Timings,
)
from engine.serve.params import (
    Cancelled,
    CompletionParams,
    EngineStopped,
    PromptTooLong,
    QueueFull,
    RequestFailed,
    ServeError,
)

__all__ = [
    "Cancelled",
    "Choice",
    "CompletionParams",
    "CompletionResult",
    "Delta",
    "EngineStopped",
    "PromptTooLong",
    "QueueFull",
    "Request",
    "RequestFailed",
    "ServeError",
    "TextEngine",
    "Timings",
]
