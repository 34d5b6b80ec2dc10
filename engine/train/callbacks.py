"""The pre-trainer's own callback (a progress bar) and its metric names.

The protocol is the kit's (engine/loop/callbacks.py).

Metric names: ``train/loss``, ``train/lr``, ``train/tokens_per_second``, ``train/mfu``
(when the device's peak is known), ``train/grad_norm``, ``val/loss``, ``val/perplexity``.
"""

from __future__ import annotations

from typing import Any

from engine.loop.callbacks import Callback


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
