from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet

from controlplane.projects.models import Membership, Project
from controlplane.projects.permissions import Action, role_allows


class ProjectNotFound(Exception):
    """Also raised for projects the user is not in: we do not reveal that they exist."""


class ProjectForbidden(Exception):
    pass


def projects_visible_to(user: User) -> QuerySet[Project]:
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def project_list_for(user: User) -> QuerySet[Project]:
    return projects_visible_to(user).annotate(
        member_count=Count("memberships", distinct=True),
        job_count=Count("jobs", distinct=True),
        running_job_count=Count("jobs", filter=Q(jobs__state="running"), distinct=True),
    )


def role_of(user: User, project: Project) -> str | None:
    if not user.is_authenticated:
        return None
    membership = Membership.objects.filter(project=project, user=user).only("role").first()
    if membership is not None:
        return membership.role
    return None


def project_for(user: User, project_id: int | str, action: Action = Action.VIEW) -> tuple[Project, str | None]:
    """The project with the caller's role, if the caller may take `action` in it.

    Staff users are platform admins: they may do everything. A non-member gets
    `ProjectNotFound` whatever the action; a member without the right role gets
    `ProjectForbidden`.
    """
    try:
        project = Project.objects.get(pk=int(project_id))
    except (Project.DoesNotExist, ValueError, TypeError):
        raise ProjectNotFound(f"project {project_id} not found") from None
    role = role_of(user, project)
    if user.is_staff:
        return project, role
    if role is None:
        raise ProjectNotFound(f"project {project_id} not found")
    if not role_allows(role, action):
        raise ProjectForbidden(f"your role '{role}' in this project may not {action.value}")
    return project, role


def members_of(project: Project) -> QuerySet[Membership]:
    return Membership.objects.filter(project=project).select_related("user").order_by("user__username")
