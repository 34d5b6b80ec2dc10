"""Who reaches finops' objects: another organisation's (or project's) answer 404.

A project's budget and quota are seen by its members and by its organisation's admins
(who manage every project's money without being members); an organisation's rate card
by its members, its webhook by its admins."""

from __future__ import annotations

from django.contrib.auth.models import User

from controlplane.finops.errors import NotAllowed, NotFound
from controlplane.orgs.models import Organisation
from controlplane.orgs.selectors import OrgForbidden, OrgNotFound, is_org_admin, org_for
from controlplane.projects.models import Project
from controlplane.projects.selectors import role_of


def org_of(user: User, slug: str, *, admin: bool = False) -> tuple[Organisation, bool]:
    """The organisation and whether the user is its admin; NotFound / NotAllowed."""
    try:
        org, _role = org_for(user, slug, admin=admin)
    except OrgNotFound as error:
        raise NotFound(str(error)) from None
    except OrgForbidden as error:
        raise NotAllowed(str(error)) from None
    return org, is_org_admin(user, org)


def project_of(user: User, project_id: int | str) -> Project:
    """The project, if the user is a member or an admin of its organisation; else NotFound."""
    try:
        project = Project.objects.select_related("organisation").get(pk=int(project_id))
    except (Project.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"project {project_id} not found") from None
    if user.is_staff or role_of(user, project) is not None:
        return project
    if is_org_admin(user, project.organisation):
        return project
    raise NotFound(f"project {project_id} not found")
