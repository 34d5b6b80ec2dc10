"""How metrics leave the trainer: a small callback interface (the workers forward to MLflow).

    class ToMLflow(Callback):
        def on_metrics(self, step, metrics):
            mlflow.log_metrics(metrics, step=step)

    Trainer(config, callbacks=[ToMLflow()]).fit()

Only rank 0 calls callbacks. Metric names: ``train/loss``, ``train/lr``,
``train/tokens_per_second``, ``train/mfu`` (when the device's peak is known),
``train/grad_norm``, ``val/loss``, ``val/perplexity``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Callback:
    """Override what you need; every hook is optional."""

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Run facts: config, parameter count, world size, start step (after a resume)."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Called every ``log_interval`` steps and after each evaluation."""

    def on_checkpoint(self, step: int, path: Path, val_loss: float | None) -> None:
        """A complete checkpoint exists at ``path``."""

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """Final step, losses, time."""


class JsonlMetrics(Callback):
    """Append every metrics record to ``<run_dir>/metrics.jsonl`` (one JSON object a line)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")


class ProgressBar(Callback):
    """A tqdm bar with the latest loss, tokens/s and validation loss."""

    def __init__(self) -> None:
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_train_start(self, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=info["max_iters"], initial=info["start_step"], unit="step", dynamic_ncols=True
        )

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        if "train/loss" in metrics:
            self.postfix["loss"] = f"{metrics['train/loss']:.4f}"
            self.postfix["tok/s"] = f"{metrics['train/tokens_per_second']:,.0f}"
        if "val/loss" in metrics:
            self.postfix["val"] = f"{metrics['val/loss']:.4f}"
        self.bar.n = step
        self.bar.set_postfix(self.postfix, refresh=True)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.n = summary["step"]
            self.bar.close()
