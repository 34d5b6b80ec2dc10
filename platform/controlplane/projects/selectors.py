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


def projects_visible_to(user: User, organisation=None) -> QuerySet[Project]:
    """The projects a user may open (of ``organisation`` only, when given).

    The organisation is the outer wall: a project membership counts only while the user is
    a member of the project's organisation too (the org services remove both together;
    the selector does not rely on it). Staff see every project."""
    projects = Project.objects.select_related("organisation")
    if organisation is not None:
        projects = projects.filter(organisation=organisation)
    if user.is_staff:
        return projects
    return projects.filter(memberships__user=user, organisation__memberships__user=user)


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


def project_list_for(user: User, organisation=None) -> QuerySet[Project]:
    from controlplane.jobs.models import Job, JobState

    my_role = Membership.objects.filter(project=OuterRef("pk"), user_id=user.pk).values("role")[:1]
    return projects_visible_to(user, organisation).annotate(
        my_role=Subquery(my_role),
        member_count=_count_of(Membership),
        job_count=_count_of(Job),
        running_job_count=_count_of(Job, state=JobState.RUNNING),
    )


def projects_of_org(organisation, *, excluding: list[int]) -> QuerySet[Project]:
    """An organisation's other projects with their counts, for its admins: they see that a
    project exists and its size, not its contents (opening it needs a project role)."""
    from controlplane.jobs.models import Job

    return (
        Project.objects.filter(organisation=organisation)
        .exclude(pk__in=excluding)
        .annotate(member_count=_count_of(Membership), job_count=_count_of(Job))
        .order_by("name")
    )


def role_of(user: User, project: Project) -> str | None:
    """The user's role in the project; None when they are not a member of it or no longer
    of its organisation (the wall holds even if a stale project membership remained)."""
    if not user.is_authenticated:
        return None
    return (
        Membership.objects.filter(
            project=project, user=user, project__organisation__memberships__user=user
        )
        .values_list("role", flat=True)
        .first()
    )


def project_for(
    user: User, project_id: int | str, action: Action = Action.VIEW
) -> tuple[Project, str | None]:
    """The project with the caller's role, if the caller may take `action` in it.

    Staff users are platform admins: they may do everything. A non-member gets
    `ProjectNotFound` whatever the action; a member without the right role gets
    `ProjectForbidden`.
    """
    try:
        project = Project.objects.select_related("organisation").get(pk=int(project_id))
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
