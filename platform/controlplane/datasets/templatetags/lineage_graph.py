"""`{% lineage_svg lineage project %}`: a dataset's (or a model's) lineage as an SVG graph.

The graph fits its box: the SVG's viewBox is the whole graph and its width the graph's
natural size, which CSS caps at the box's width, so a long chain shrinks to fit instead of
scrolling out of sight. static/js/lineage.js adds the controls: zoom buttons, a fit button,
drag to pan, Ctrl+wheel (or the wheel once the graph has focus) to zoom, and the keyboard
(arrows pan, + and - zoom, 0 fits). Every node is a link to its page, reachable with Tab;
without JavaScript the graph is still whole, fitted and linked.
"""

from __future__ import annotations

import zlib
from html import escape

from django import template
from django.templatetags.static import static
from django.urls import reverse
from django.utils.safestring import mark_safe

register = template.Library()

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 170, 46, 60, 18, 10
STATE_FILL = {
    "ready": "#e6fcf5",
    "succeeded": "#e6fcf5",
    "failed": "#fff5f5",
    "running": "#e7f5ff",
    "queued": "#f8f9fa",
    "uploading": "#fff9db",
    "cancelled": "#f1f3f5",
    "erased": "#f1f3f5",
    "registering": "#fff9db",
    "refused": "#fff5f5",
    "deleted": "#f1f3f5",
}
_CONTROLS = (
    '<div class="lineage-controls" hidden>'
    '<button type="button" data-lineage-zoom="in" aria-label="Zoom in">+</button>'
    '<button type="button" data-lineage-zoom="out" aria-label="Zoom out">&#8722;</button>'
    '<button type="button" data-lineage-zoom="fit">Fit</button>'
    '<span class="muted small" data-lineage-scale aria-live="polite"></span>'
    '<span class="muted small">Drag to pan; Ctrl+wheel, or + and &#8722;, to zoom.</span>'
    "</div>"
)


def node_url(node, project, dataset=None) -> str:
    """Where a node links: its own `url` (the registry's graph), a version of `dataset`,
    or a job of the project."""
    if node.url:
        return node.url
    if node.url_kind == "version":
        return reverse("dataset-version", args=[project.pk, dataset.pk, node.ident])
    return reverse("job-detail", args=[project.pk, node.ident])


def _edge(x1: float, y1: float, x2: float, y2: float, marker: str) -> str:
    return (
        f'<line class="edge" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#868e96" '
        f'marker-end="url(#{marker})"/>'
    )


def _node(node, x: float, y: float, url: str) -> str:
    fill = STATE_FILL.get(node.state, "#f8f9fa")
    detail = node.detail[:26] + ("…" if len(node.detail) > 26 else "")
    name = f"{node.label}, {node.detail}, {node.state}"
    return (
        # Named by its <title> (SVG's own accessible name), not aria-label: an aria-label
        # would have to repeat the visible, shortened text word for word (WCAG 2.5.3).
        f'<a href="{escape(url)}" class="node">'
        f"<title>{escape(name)}</title>"
        f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" '
        'stroke="#adb5bd"/>'
        f'<text x="{x + 8}" y="{y + 18}" font-weight="600">{escape(node.label)}</text>'
        f'<text x="{x + 8}" y="{y + 35}" class="muted">{escape(detail)} · '
        f"{escape(node.state)}</text></a>"
    )


@register.simple_tag
def lineage_svg(lineage, project, dataset=None) -> str:
    """`dataset`: whose versions the "version" nodes are; nodes that carry a `url` (the
    registry's graph) link there instead."""
    if not lineage.nodes:
        return mark_safe('<p class="muted">No versions yet.</p>')

    def box(node):
        return PAD + node.column * (BOX_W + GAP_X), PAD + node.row * (BOX_H + GAP_Y)

    columns = max(n.column for n in lineage.nodes.values()) + 1
    rows = max(n.row for n in lineage.nodes.values()) + 1
    # The arrowhead's id, unique per graph: a page may show two (ids must not repeat).
    marker = f"lineage-arrow-{zlib.crc32(' '.join(lineage.nodes).encode()):08x}"
    width = PAD * 2 + columns * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + rows * (BOX_H + GAP_Y) - GAP_Y
    parts = [
        '<div class="lineage-view" data-lineage>',
        _CONTROLS,
        f'<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" preserveAspectRatio="xMidYMid meet" tabindex="0" role="group" '
        f'aria-label="lineage graph of {len(lineage.nodes)} nodes: Tab to a node to open it; '
        'arrow keys pan, + and - zoom, 0 fits">',
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="6" markerHeight="6" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#868e96"/></marker></defs>',
    ]
    for source, target in lineage.edges:
        if source not in lineage.nodes or target not in lineage.nodes:
            continue
        (x1, y1), (x2, y2) = box(lineage.nodes[source]), box(lineage.nodes[target])
        parts.append(_edge(x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2, marker))
    for node in lineage.nodes.values():
        x, y = box(node)
        parts.append(_node(node, x, y, node_url(node, project, dataset)))
    parts += [
        "</svg>",
        f'<script src="{escape(static("js/lineage.js"))}" defer></script>',
        "</div>",
    ]
    return mark_safe("".join(parts))
