"""`{% line_chart series %}`: an inline SVG line chart, drawn on the server.

No charting library in the page: a chart is a few polylines, and a server-drawn SVG works
with htmx swaps, prints, and needs no JavaScript.
"""

from __future__ import annotations

import math
from html import escape

from django import template
from django.utils.safestring import mark_safe

register = template.Library()

COLOURS = ["#4c6ef5", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#f08c00", "#e03131", "#5c7cfa"]
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD = 640, 220, 56, 28, 10


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


@register.simple_tag
def line_chart(lines: dict, title: str = "") -> str:
    """`lines`: {label: [(x, y), ...]}; one colour per label, shared axes."""
    points = [
        (x, y) for line in lines.values() for x, y in line if y is not None and math.isfinite(y)
    ]
    if not points:
        return mark_safe('<p class="muted">No points yet.</p>')
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
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}">{_fmt(x0)}</text>',
        f'<text x="{PAD_LEFT + plot_w}" y="{HEIGHT - 8}" text-anchor="end">step {_fmt(x1)}</text>',
    ]
    legend = []
    for index, (label, line) in enumerate(lines.items()):
        colour = COLOURS[index % len(COLOURS)]
        coords = " ".join(
            f"{sx(x):.1f},{sy(y):.1f}" for x, y in line if y is not None and math.isfinite(y)
        )
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}"/>'
        )
        legend.append(
            f'<span class="swatch" style="background:{colour}"></span>{escape(str(label))}'
        )
    parts.append("</svg>")
    caption = f"<figcaption>{escape(title)} {' '.join(legend)}</figcaption>"
    return mark_safe(f'<figure class="chart">{"".join(parts)}{caption}</figure>')
