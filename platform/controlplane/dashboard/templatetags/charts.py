"""`{% line_chart series %}`: an interactive chart (uPlot, mounted by static/js/charts.js)
over a server-drawn SVG of the same data.

The SVG is drawn on the server and stays in the page: it is what prints, what a browser
without JavaScript shows, and what an htmx swap shows until the script mounts. The data
travels beside it as a `json_script` block (the Content-Security-Policy refuses inline
script, and JSON in a `<script type="application/json">` is data, not code); charts.js
reads it and draws axes with ticks, hover values, drag-zoom, a log scale and smoothing.
"""

from __future__ import annotations

import itertools
import math
from html import escape

from django import template
from django.utils.html import json_script
from django.utils.safestring import mark_safe

register = template.Library()

COLOURS = ["#4c6ef5", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#f08c00", "#e03131", "#5c7cfa"]
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD = 640, 220, 56, 28, 10
# Ids for the charts' data blocks: unique within a process, so within any page and any
# fragment swapped into it (htmx) without a counter in the template's context.
_chart_ids = itertools.count(1)


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _finite(line) -> list[tuple[float, float]]:
    return [(x, y) for x, y in line if y is not None and math.isfinite(y)]


def is_constant(points: list[tuple[float, float]]) -> bool:
    """A series whose every value is the same (a fixed learning rate, a batch size): it
    says nothing a chart needs to draw, and it squashes the others against an axis, so it
    starts hidden (its legend entry turns it on)."""
    return len(points) > 1 and min(y for _, y in points) == max(y for _, y in points)


def chart_data(lines: dict, title: str = "", x_label: str = "step") -> dict:
    """What charts.js draws: {"title", "x_label", "series": [{"label", "colour", "points",
    "constant"}]}, points as [x, y] pairs with the missing and non-finite values left out."""
    series = []
    for index, (label, line) in enumerate(lines.items()):
        points = _finite(line)
        series.append(
            {
                "label": str(label),
                "colour": COLOURS[index % len(COLOURS)],
                "points": [[x, y] for x, y in points],
                "constant": is_constant(points),
            }
        )
    return {"title": title, "x_label": x_label, "series": series}


def _svg(lines: dict, title: str, x_from: str, x_to: str) -> str:
    points = [p for line in lines.values() for p in _finite(line)]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD, HEIGHT - PAD_BOTTOM - PAD

    def sx(x: float) -> float:
        return PAD_LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return PAD + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect x="{PAD_LEFT}" y="{PAD}" width="{plot_w}" height="{plot_h}" class="plot"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD + 8}" text-anchor="end">{_fmt(y1)}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD + plot_h}" text-anchor="end">{_fmt(y0)}</text>',
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}">{escape(x_from) or _fmt(x0)}</text>',
        f'<text x="{PAD_LEFT + plot_w}" y="{HEIGHT - 8}" text-anchor="end">'
        f"{escape(x_to) or f'step {_fmt(x1)}'}</text>",
    ]
    legend = []
    for index, (label, line) in enumerate(lines.items()):
        colour = COLOURS[index % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in _finite(line))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}"/>'
        )
        legend.append(
            f'<span class="swatch" style="background:{colour}"></span>{escape(str(label))}'
        )
    parts.append("</svg>")
    return f'{"".join(parts)}<p class="chart-legend small">{" ".join(legend)}</p>'


@register.simple_tag
def line_chart(
    lines: dict, title: str = "", x_from: str = "", x_to: str = "", x_label: str = ""
) -> str:
    """`lines`: {label: [(x, y), ...]}; one colour per label, shared axes. `x_from` and
    `x_to` label the x axis's ends (dates) instead of the first and last step; `x_label`
    names the x axis (default: "step", or "x_from – x_to" when those are given)."""
    if not any(_finite(line) for line in lines.values()):
        return mark_safe(
            f'<figure class="chart chart-empty"><figcaption class="chart-title">{escape(title)}'
            '</figcaption><p class="muted">No points yet.</p></figure>'
        )
    x_label = x_label or (f"{x_from} – {x_to}" if x_from or x_to else "step")
    data_id = f"chart-data-{next(_chart_ids)}"
    data = json_script(chart_data(lines, title, x_label), data_id)
    return mark_safe(
        f'<figure class="chart" data-chart="{data_id}" data-title="{escape(title)}">'
        f'<figcaption class="chart-title">{escape(title)}</figcaption>'
        f'<div class="chart-fallback">{_svg(lines, title, x_from, x_to)}</div>'
        f"{data}</figure>"
    )


BAR_HEIGHT, BAR_GAP, BAR_LABEL_W = 18, 6, 170


@register.simple_tag
def bar_chart(bars: list, title: str = "", unit: str = "") -> str:
    """`bars`: [(label, value), ...], drawn as horizontal bars scaled to the largest."""
    bars = [(label, float(value)) for label, value in bars if value is not None]
    if not bars or max(value for _, value in bars) <= 0:
        return mark_safe('<p class="muted">Nothing to draw yet.</p>')
    top = max(value for _, value in bars)
    plot_w = WIDTH - BAR_LABEL_W - 90
    height = len(bars) * (BAR_HEIGHT + BAR_GAP) + BAR_GAP
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">'
    ]
    for index, (label, value) in enumerate(bars):
        y = BAR_GAP + index * (BAR_HEIGHT + BAR_GAP)
        w = max(value / top * plot_w, 1.0 if value > 0 else 0.0)
        colour = COLOURS[index % len(COLOURS)]
        parts += [
            f'<text x="{BAR_LABEL_W - 6}" y="{y + 13}" text-anchor="end">{escape(str(label))}</text>',
            f'<rect x="{BAR_LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_HEIGHT}" fill="{colour}"/>',
            f'<text x="{BAR_LABEL_W + w + 6:.1f}" y="{y + 13}">{_fmt(value)} {escape(unit)}</text>',
        ]
    parts.append("</svg>")
    return mark_safe(
        f'<figure class="chart">{"".join(parts)}<figcaption>{escape(title)}</figcaption></figure>'
    )
