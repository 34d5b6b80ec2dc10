"""What an evaluation returns, and its phase timing."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Told the name and the overall fraction of each phase before it starts; it may raise to
# stop the evaluation (a worker's cancel check).
PhaseHook = Callable[[str, float], None]


@dataclass
class EvalResult:
    metrics: dict[str, float]  # flat figures: what thresholds and charts read
    details: dict[str, Any] = field(default_factory=dict)  # samples, per class, settings


class Phases:
    """Announces each phase to the hook and keeps its wall time (details["seconds"])."""

    def __init__(self, hook: PhaseHook | None) -> None:
        self.hook = hook
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, fraction: float):
        if self.hook is not None:
            self.hook(name, fraction)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
