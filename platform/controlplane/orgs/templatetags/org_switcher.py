"""`{% org_switcher %}`: the header's organisation switcher (base.html). A user in one
organisation sees its name; a user in several picks the one the dashboard shows."""

from __future__ import annotations

from django import template

from controlplane.orgs.current import current_org
from controlplane.orgs.selectors import orgs_of

register = template.Library()


@register.inclusion_tag("orgs/_switcher.html", takes_context=True)
def org_switcher(context) -> dict:
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return {"current": None, "orgs": []}
    return {
        "current": current_org(request),
        "orgs": list(orgs_of(request.user).order_by("name", "id")[:50]),
        "next": request.get_full_path(),
        "csrf_token": context.get("csrf_token"),
    }
