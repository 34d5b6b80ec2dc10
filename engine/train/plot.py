"""Loss curves of a run as a PNG: ``python -m engine train plot var/runs/shakespeare-char out.png``.

Reads ``<run_dir>/metrics.jsonl`` (written by :class:`engine.loop.metrics.JsonlMetrics`).
matplotlib is a development dependency, imported only here.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}; is it a training run folder?")
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def plot_losses(run_dir: str | Path, out: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    # A resumed run appends again from its checkpoint step: the last record of a step wins.
    train = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    val = {r["step"]: r["val/loss"] for r in records if "val/loss" in r}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train loss", linewidth=1)
    if val:
        ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", label="validation loss")
        last = max(val)
        ax.annotate(
            f"{val[last]:.3f}", (last, val[last]), textcoords="offset points", xytext=(-10, 8)
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or str(run_dir))
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
