"""Filters of the job page: durations as people read them."""

from __future__ import annotations

from django import template

from controlplane.jobs.page_values import human_duration

register = template.Library()


@register.filter(name="duration")
def duration(seconds) -> str:
    """`{{ timing.duration|duration }}`: 12.3 s, 4 min 05 s, 2 h 03 min, or — when unknown."""
    return human_duration(seconds if isinstance(seconds, int | float) else None)
