from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

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


def _count_of(model, **filters) -> Coalesce:
    """A correlated COUNT per project row.

    Scalar subqueries are evaluated only for the rows the page returns, so the list costs
    the same with 10 or 10,000 jobs per project; a GROUP BY over the joined tables would
    aggregate every job of every visible project before LIMIT applies.
    """
    counted = (
        model.objects.filter(project=OuterRef("pk"), **filters)
        .order_by()
        .values("project")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def project_list_for(user: User) -> QuerySet[Project]:
    from controlplane.jobs.models import Job, JobState

    my_role = Membership.objects.filter(project=OuterRef("pk"), user_id=user.pk).values("role")[:1]
    return projects_visible_to(user).annotate(
        my_role=Subquery(my_role),
        member_count=_count_of(Membership),
        job_count=_count_of(Job),
        running_job_count=_count_of(Job, state=JobState.RUNNING),
    )


def role_of(user: User, project: Project) -> str | None:
    if not user.is_authenticated:
        return None
    membership = Membership.objects.filter(project=project, user=user).only("role").first()
    if membership is not None:
        return membership.role
    return None


def project_for(
    user: User, project_id: int | str, action: Action = Action.VIEW
) -> tuple[Project, str | None]:
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
    return (
        Membership.objects.filter(project=project).select_related("user").order_by("user__username")
    )


def membership_of(project: Project, user_id: int) -> Membership | None:
    """The user's membership of the project, or None when they are not a member."""
    return members_of(project).filter(user_id=user_id).first()


def active_user_named(username: str) -> User | None:
    """The user a member is added by name: only active accounts can join a project."""
    return User.objects.filter(username=username, is_active=True).first()


def project_named(text: str) -> Project | None:
    """A project by slug, or by id when the text is a number (command-line arguments)."""
    found = Project.objects.filter(slug=text).first()
    if found is None and text.isdigit():
        found = Project.objects.filter(pk=int(text)).first()
    return found
