"""`@project_page(action)`: resolve the project of a page and check the caller's role.

Every app's pages (projects, uploads, datasets, jobs, audit) use it, so that no page can
forget the role check (tests/platform/projects/test_access_matrix.py walks them all).
"""

from __future__ import annotations

from functools import wraps
from typing import TypeVar

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django_htmx.middleware import HtmxDetails

from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import ProjectForbidden, ProjectNotFound, project_for

T = TypeVar("T")


class ProjectRequest(HttpRequest):
    """What a page under `@project_page` gets: htmx's details and the caller's rights."""

    htmx: HtmxDetails
    project_role: str | None
    can: dict[str, bool]  # {"view": True, "run": False, "manage": False}


def found_or_404(found: T | None, message: str) -> T:
    """What a selector found in the page's project, or the 404 page saying what is missing."""
    if found is None:
        raise Http404(message)
    return found


def project_page(action: Action = Action.VIEW):
    def decorate(view):
        @login_required
        @wraps(view)
        def wrapper(request, project_id: int, *args, **kwargs):
            try:
                project, role = project_for(request.user, project_id, action)
            except ProjectNotFound as error:
                raise Http404(str(error)) from None
            except ProjectForbidden as error:
                raise PermissionDenied(str(error)) from None
            request.project_role = role
            request.can = {a.value: request.user.is_staff or role_allows(role, a) for a in Action}
            return view(request, project, *args, **kwargs)

        return wrapper

    return decorate
