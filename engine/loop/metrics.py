"""Metrics of a run: ``metrics.jsonl`` as a callback, and the window that averages steps.

callbacks.append(JsonlMetrics(run_dir / "metrics.jsonl"))   # one {"step", ...} a line

window = MetricsWindow()
window.add({"train/loss": 2.1, "train/grad_norm": 0.3})     # every step
averaged = window.flush(step, "train/steps_per_second", per_step=1)   # every log_interval
progress(window.describe("lora", step, total, averaged))
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from engine.loop.callbacks import Callback


class JsonlMetrics(Callback):
    """Append every metrics record to ``path`` (one JSON object a line, ``step`` first)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")


class MetricsWindow:
    """Per-step metrics averaged over a logging window, checked for NaN, shown as one line."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(value)

    def flush(self, step: int, rate_name: str, per_step: float, error: type[Exception]) -> dict:
        """The window's means plus ``rate_name`` (``per_step`` units a second); then reset.

        Raises ``error`` naming the metrics that became NaN or infinite (a gradient norm
        may: the step is skipped by the clipping, not the run).
        """
        steps = max((len(v) for v in self.values.values()), default=0)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        averaged = {key: sum(v) / len(v) for key, v in self.values.items()}
        averaged[rate_name] = steps * per_step / elapsed
        bad = [k for k, v in averaged.items() if not math.isfinite(v) and "grad_norm" not in k]
        if bad:
            raise error(f"step {step}: {', '.join(bad)} became NaN or infinite")
        self.values, self.started = {}, time.perf_counter()
        return averaged

    @staticmethod
    def describe(kind: str, step: int, total: int, averaged: dict[str, float]) -> str:
        shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in averaged.items())
        return f"{kind} step {step}/{total} {shown}"
