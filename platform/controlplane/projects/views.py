"""Pages of the projects app: the project list (and create), a project's page, its members."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, project_page
from controlplane.jobs.runs import job_rows_for
from controlplane.orgs.current import current_org
from controlplane.orgs.selectors import orgs_for_new_project, orgs_of
from controlplane.projects.forms import MemberForm, ProjectForm, RoleForm
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.projects.selectors import (
    active_user_named,
    members_of,
    membership_of,
    project_list_for,
)
from controlplane.projects.services import (
    MembershipError,
    member_add,
    member_change_role,
    member_remove,
    project_create,
)
from controlplane.uploads.forms import UploadForm
from controlplane.uploads.selectors import uploads_for


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    """The current organisation's projects, and the form that creates one (in any
    organisation the user may create in; the current one preselected)."""
    org = current_org(request)
    choices = orgs_for_new_project(request.user).order_by("name", "id")
    preselected = request.GET.get("org") or (org.slug if org else None)
    form = ProjectForm(
        request.POST or None, organisations=choices, initial={"organisation": preselected}
    )
    if "organisation" not in form.fields and orgs_of(request.user).exists():
        # In organisations, none of which lets them create: the page says so, and a post
        # is refused rather than landing in the default organisation.
        if request.method == "POST":
            raise PermissionDenied("only organisation admins create projects here")
        form = None
    if request.method == "POST" and form.is_valid():
        fields = dict(form.cleaned_data)
        try:
            project = project_create(actor=request.user, **fields)
        except MembershipError as error:
            form.add_error("slug", str(error))
        else:
            messages.success(request, f"Project {project.name} created.")
            return redirect("project-detail", project_id=project.pk)
    projects = project_list_for(request.user, org).order_by("name")
    return render(
        request,
        "projects/project_list.html",
        {"projects": projects, "form": form, "org": org},
    )


@project_page()
def project_detail(request: ProjectRequest, project: Project) -> HttpResponse:
    return render(
        request,
        "projects/project_detail.html",
        {
            "project": project,
            "uploads": uploads_for(project)[:20],
            "jobs": job_rows_for(project)[:10],
            "upload_form": UploadForm(),
            "members": members_of(project),
        },
    )


@project_page()
def member_list(request: ProjectRequest, project: Project) -> HttpResponse:
    form = MemberForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if not request.can["manage"]:
            raise PermissionDenied("only owners manage members")
        if form.is_valid() and _member_added(request, project, form):
            return redirect("member-list", project_id=project.pk)
    return render(
        request,
        "projects/members.html",
        {"project": project, "members": members_of(project), "form": form, "role_form": RoleForm()},
    )


def _member_added(request: ProjectRequest, project: Project, form: MemberForm) -> bool:
    """Add the named user; on a refusal the reason goes on the form and nothing changes."""
    user = active_user_named(form.cleaned_data["username"])
    if user is None:
        form.add_error("username", "no active user with this name")
        return False
    role = form.cleaned_data["role"]
    try:
        member_add(project=project, user=user, role=role, actor=request.user)
    except MembershipError as error:
        form.add_error(None, str(error))
        return False
    messages.success(request, f"{user.username} added as {role}.")
    return True


@project_page(Action.MANAGE)
@require_POST
def member_change(request: ProjectRequest, project: Project, user_id: int) -> HttpResponse:
    membership = membership_of(project, user_id)
    if membership is None:
        raise Http404(f"user {user_id} is not a member of this project")
    try:
        if request.POST.get("remove"):
            member_remove(membership=membership, actor=request.user)
            messages.success(request, f"{membership.user.username} removed.")
        else:
            form = RoleForm(request.POST)
            if form.is_valid():
                role = form.cleaned_data["role"]
                member_change_role(membership=membership, role=role, actor=request.user)
                messages.success(request, f"{membership.user.username} is now {role}.")
    except MembershipError as error:
        messages.error(request, str(error))
    return redirect("member-list", project_id=project.pk)
