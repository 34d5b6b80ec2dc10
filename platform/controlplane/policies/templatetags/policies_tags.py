"""Template helpers of the compliance pages, and `{% waivers_badge type id %}`, which any
page showing a subject (dataset version, job, model version, deployment) includes so that
a waived rule is visible wherever the waived subject appears."""

from __future__ import annotations

from typing import Any

from django import template

from controlplane.policies.page_selectors import rule_title
from controlplane.policies.selectors import waivers_for_subject

register = template.Library()


@register.inclusion_tag("policies/_waivers_badge.html")
def waivers_badge(subject_type: str, subject_id: int | None) -> dict:
    waivers = []
    if subject_id:
        waivers = list(waivers_for_subject(subject_type, subject_id))
        for waiver in waivers:
            waiver.rule_title = rule_title(waiver.rule)
    return {"waivers": waivers}


@register.filter
def param_value(value: Any) -> str:
    """A rule parameter as a reader wants it: lists comma-separated, thresholds as
    "val_loss <= 2.5", booleans as yes/no. An empty list is "(empty)": what it means
    (any source, every PII type, no threshold) is the parameter's help."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    if isinstance(value, list):
        if not value:
            return "(empty)"
        return ", ".join(
            f"{item.get('metric')} {item.get('op')} {item.get('value')}"
            if isinstance(item, dict)
            else str(item)
            for item in value
        )
    return str(value)


@register.filter
def rule_name(key: str) -> str:
    return rule_title(key)
