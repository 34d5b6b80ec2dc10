"""`{% policy_denied_banner %}`: the refusal a form met, on the page that shows the form
again or on the page its view redirected to (base.html)."""

from __future__ import annotations

from django import template

from controlplane.policies.pages import denied_for_page

register = template.Library()


@register.inclusion_tag("policies/_denied.html", takes_context=True)
def policy_denied_banner(context) -> dict:
    request = context.get("request")
    denied = denied_for_page(request) if request is not None else None
    return {"denied": denied}
