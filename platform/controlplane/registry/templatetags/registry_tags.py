"""Template helpers of the registry's pages and the "Register this model" block that
the job page includes (`{% register_model_block %}`)."""

from __future__ import annotations

import math

from django import template

from controlplane.registry import page_selectors as pages
from controlplane.registry.forms import RegisterForm

register = template.Library()


@register.filter
def figure(value) -> str:
    """A metric as a reader wants it: 4 significant digits, integers with separators."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


@register.filter
def headline(metrics) -> str:
    """An evaluation's headline figures on one line ("val_loss 1.5, perplexity 4.48")."""
    return pages.figures_text(metrics) or "—"


@register.filter
def signed(value) -> str:
    """A delta with its sign (+0.031, -1.2), or an em dash when there is none."""
    if value is None:
        return "—"
    return f"{value:+.4g}"


@register.inclusion_tag("registry/_register_block.html", takes_context=True)
def register_model_block(context) -> dict:
    """On a job's page: the versions made from the job, and, for engineers and owners on a
    succeeded model-making job, the form that registers it."""
    request, project, job = context["request"], context["project"], context["job"]
    can_register = request.can.get("run", False) and pages.registrable(job)
    return {
        "request": request,
        "project": project,
        "job": job,
        "versions": pages.versions_from_job(job) if pages.registrable(job) else [],
        "form": RegisterForm(model_names=pages.model_names_of(project)) if can_register else None,
        "csrf_token": context.get("csrf_token"),
    }
