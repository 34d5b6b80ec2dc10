"""`{% lineage_svg lineage project %}`: a dataset's lineage drawn as an SVG graph."""

from __future__ import annotations

from html import escape

from django import template
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


@register.simple_tag
def lineage_svg(lineage, project, dataset=None) -> str:
    """`dataset`: whose versions the "version" nodes are; nodes that carry a `url` (the
    registry's graph) link there instead."""
    if not lineage.nodes:
        return mark_safe('<p class="muted">No versions yet.</p>')

    def box(node):
        return PAD + node.column * (BOX_W + GAP_X), PAD + node.row * (BOX_H + GAP_Y)

    width = PAD * 2 + (max(n.column for n in lineage.nodes.values()) + 1) * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + (max(n.row for n in lineage.nodes.values()) + 1) * (BOX_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="dataset lineage">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#868e96"/>'
        "</marker></defs>",
    ]
    for source, target in lineage.edges:
        if source not in lineage.nodes or target not in lineage.nodes:
            continue
        (x1, y1), (x2, y2) = box(lineage.nodes[source]), box(lineage.nodes[target])
        parts.append(
            f'<line x1="{x1 + BOX_W}" y1="{y1 + BOX_H / 2}" x2="{x2}" y2="{y2 + BOX_H / 2}" '
            'stroke="#868e96" marker-end="url(#arrow)"/>'
        )
    for node in lineage.nodes.values():
        x, y = box(node)
        if node.url:
            url = node.url
        elif node.url_kind == "version":
            url = reverse("dataset-version", args=[project.pk, dataset.pk, node.ident])
        else:
            url = reverse("job-detail", args=[project.pk, node.ident])
        fill = STATE_FILL.get(node.state, "#f8f9fa")
        parts.append(
            f'<a href="{url}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" '
            f'fill="{fill}" stroke="#adb5bd"/>'
            f'<text x="{x + 8}" y="{y + 18}" font-weight="600">{escape(node.label)}</text>'
            f'<text x="{x + 8}" y="{y + 35}" class="muted">{escape(node.detail[:26])} · {escape(node.state)}</text></a>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))
