"""Figures as the demo prints them: the same rounding and units as the pages that show them,
so a newcomer who opens a page finds the number the terminal gave.

- metrics: 4 significant digits (the registry's `figure` filter, the job page's results);
- accuracies: a percentage with one decimal (the job page's before/after table);
- sizes: decimal SI units, "5.1 MB" (`controlplane.sizes.human_size`, one convention for
  every page);
- durations: "48 s", "2 min 05 s" (the job page's header).
"""

from __future__ import annotations

from controlplane.jobs.page_values import human_duration as duration
from controlplane.registry.templatetags.registry_tags import figure
from controlplane.sizes import human_size

__all__ = ["duration", "human_size", "metric", "percent"]  # what the demo's stages print with


def metric(value: float | int | None) -> str:
    """A loss, a reward, a KL: 4 significant digits ("1.873", "0.0213")."""
    return figure(value)


def percent(share: float | None) -> str:
    """An accuracy in [0, 1] as "71.9 %"."""
    return "—" if share is None else f"{share * 100:.1f} %"
