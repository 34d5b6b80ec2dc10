"""The organisation a signed-in user is working in (the dashboard's scope), kept in the
session: the header's switcher and opening `/orgs/<slug>/` set it.

Only pages read it; the API names its organisation in each request (`?org=`, a slug in
the path), so a script never depends on what a browser last clicked."""

from __future__ import annotations

from django.http import HttpRequest

from controlplane.orgs.models import Organisation
from controlplane.orgs.selectors import orgs_of, visible_org_named

SESSION_KEY = "current_org"


def current_org(request: HttpRequest) -> Organisation | None:
    """The session's organisation while the user may still open it, else their first one
    (by name); None for a user in no organisation. Cached on the request."""
    if hasattr(request, "_current_org"):
        return request._current_org
    org = None
    user = request.user
    if user.is_authenticated:
        slug = request.session.get(SESSION_KEY)
        if slug:
            org = visible_org_named(user, slug)
        if org is None:
            # Staff see every organisation but default to one they belong to, if any.
            own = Organisation.objects.filter(memberships__user=user)
            org = own.order_by("name", "id").first() or orgs_of(user).order_by("name", "id").first()
    request._current_org = org
    return org


def set_current_org(request: HttpRequest, org: Organisation) -> None:
    request.session[SESSION_KEY] = org.slug
    request._current_org = org
