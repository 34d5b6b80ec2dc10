"""`{% load run_table %}`: how run tables show a run's figures.

{{ job|run_duration }}      "3 min 20 s" (so far, while it runs); "—" before it starts
{{ value|metric }}          a metric or parameter value to 4 significant digits
{% sort_header table column %}  a column header that sorts the table by it (a link that
                            keeps the page's other query parameters; aria-sort says how
                            the table is sorted now)
"""

from __future__ import annotations

import datetime as dt
import math

from django import template
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from controlplane.jobs.page_values import human_duration
from controlplane.jobs.runs import Column, RunTable, duration_of

register = template.Library()


def format_duration(duration: dt.timedelta | None) -> str:
    """The job page's duration format (jobs/page_values.py), so a run reads the same in
    the lists, on its page and in the demo's printout."""
    return human_duration(None if duration is None else duration.total_seconds())


@register.filter
def run_duration(job) -> str:
    return format_duration(duration_of(job))


@register.filter
def duration(value: dt.timedelta | None) -> str:
    return format_duration(value)


@register.filter
def metric(value) -> str:
    """Integers whole; other numbers to 4 significant digits (1e-05 below 0.0001)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


@register.simple_tag(takes_context=True)
def sort_header(context, table: RunTable, column: Column) -> str:
    """A <th> whose link sorts by the column; the current column's link flips the order."""
    request = context["request"]
    query = request.GET.copy()
    current = table.sort == column.sort
    descending = not table.descending if current else None
    query["sort"] = column.sort
    if descending is None:
        query.pop("order", None)  # the column's natural order (runs.run_table)
    else:
        query["order"] = "desc" if descending else "asc"
    state = ("descending" if table.descending else "ascending") if current else "none"
    arrow = format_html('<span aria-hidden="true"> {}</span>', "▼" if table.descending else "▲")
    return format_html(
        '<th scope="col"{} aria-sort="{}"><a href="?{}" title="sort by {}">{}{}</a></th>',
        mark_safe(' class="num"') if column.numeric else "",
        state,
        query.urlencode(),
        column.label,
        column.label,
        arrow if current else "",
    )
