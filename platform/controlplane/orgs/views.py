"""Pages of the organisations app: the list (and create), one organisation (its projects
and members; opening it makes it the current one), its members and settings (admins),
and the header's switcher.

Pages call the same services as the API, so a page can do nothing the API would refuse;
a refusal (the last admin, an unknown user) is shown on the page."""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from controlplane.orgs.current import set_current_org
from controlplane.orgs.forms import OrgForm, OrgMemberForm, OrgRoleForm, OrgSettingsForm
from controlplane.orgs.models import Organisation
from controlplane.orgs.selectors import (
    OrgForbidden,
    OrgNotFound,
    is_org_admin,
    may_create_project_in,
    org_for,
    org_members,
    org_membership_of,
    orgs_of,
    visible_org_named,
)
from controlplane.orgs.services import (
    OrgError,
    org_create,
    org_member_add,
    org_member_change_role,
    org_member_remove,
    org_update,
)
from controlplane.projects.selectors import active_user_named, project_list_for, projects_of_org


class OrgRequest(HttpRequest):
    org_role: str | None
    org_admin: bool


def org_page(*, admin: bool = False):
    """Resolve `<slug>` to an organisation the caller is in (404 otherwise); with
    ``admin``, 403 for a member who is not its admin."""

    def decorate(view):
        @login_required
        @wraps(view)
        def wrapper(request, slug: str, *args, **kwargs):
            try:
                org, role = org_for(request.user, slug, admin=admin)
            except OrgNotFound as error:
                raise Http404(str(error)) from None
            except OrgForbidden as error:
                raise PermissionDenied(str(error)) from None
            request.org_role = role
            request.org_admin = request.user.is_staff or is_org_admin(request.user, org)
            return view(request, org, *args, **kwargs)

        return wrapper

    return decorate


@login_required
def org_list(request: HttpRequest) -> HttpResponse:
    form = OrgForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            org = org_create(actor=request.user, **form.cleaned_data)
        except OrgError as error:
            form.add_error("slug", str(error))
        else:
            messages.success(request, f"Organisation {org.name} created; you are its admin.")
            return redirect("orgs:detail", slug=org.slug)
    orgs = orgs_of(request.user).order_by("name", "id")
    return render(request, "orgs/org_list.html", {"orgs": orgs, "form": form})


@org_page()
def org_detail(request: OrgRequest, org: Organisation) -> HttpResponse:
    set_current_org(request, org)
    projects = list(project_list_for(request.user, org).order_by("name"))
    others = []
    if request.org_admin:
        others = projects_of_org(org, excluding=[p.pk for p in projects])
    return render(
        request,
        "orgs/org_detail.html",
        {
            "org": org,
            "projects": projects,
            "other_projects": others,
            "members": org_members(org),
            "may_create_project": may_create_project_in(request.user, org),
            "member_form": OrgMemberForm(),
            "role_form": OrgRoleForm(),
            "failing_webhook": _failing_webhook(org) if request.org_admin else None,
        },
    )


def _failing_webhook(org: Organisation):
    """The organisation's webhook when its last delivery failed (none since succeeded):
    its admins see it on the organisation's page, not only on the webhook's own."""
    from controlplane.finops.selectors import webhook_of

    hook = webhook_of(org)
    if hook is None or hook.last_failure_at is None:
        return None
    if hook.last_success_at is not None and hook.last_success_at > hook.last_failure_at:
        return None
    return hook


@org_page(admin=True)
@require_POST
def member_add(request: OrgRequest, org: Organisation) -> HttpResponse:
    form = OrgMemberForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
        return redirect("orgs:detail", slug=org.slug)
    user = active_user_named(form.cleaned_data["username"])
    if user is None:
        messages.error(request, f"No active user named {form.cleaned_data['username']}.")
        return redirect("orgs:detail", slug=org.slug)
    role = form.cleaned_data["role"]
    try:
        org_member_add(org=org, user=user, role=role, actor=request.user)
    except OrgError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"{user.username} added as {role}.")
    return redirect("orgs:detail", slug=org.slug)


@org_page(admin=True)
@require_POST
def member_change(request: OrgRequest, org: Organisation, user_id: int) -> HttpResponse:
    membership = org_membership_of(org, user_id)
    if membership is None:
        raise Http404(f"user {user_id} is not a member of this organisation")
    username = membership.user.username
    try:
        if request.POST.get("remove"):
            left = org_member_remove(membership=membership, actor=request.user)
            also = f" and from {', '.join(left)}" if left else ""
            messages.success(request, f"{username} removed from {org.name}{also}.")
        else:
            form = OrgRoleForm(request.POST)
            if form.is_valid():
                role = form.cleaned_data["role"]
                org_member_change_role(membership=membership, role=role, actor=request.user)
                messages.success(request, f"{username} is now {role}.")
            else:
                messages.error(request, "Pick a role: admin or member.")
    except OrgError as error:
        messages.error(request, str(error))
    return redirect("orgs:detail", slug=org.slug)


@org_page(admin=True)
def org_settings(request: OrgRequest, org: Organisation) -> HttpResponse:
    initial = {
        "name": org.name,
        "description": org.description,
        "members_create_projects": org.members_create_projects,
    }
    form = OrgSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        org_update(org=org, actor=request.user, **form.cleaned_data)
        messages.success(request, "Settings saved.")
        return redirect("orgs:detail", slug=org.slug)
    return render(request, "orgs/org_settings.html", {"org": org, "form": form})


@login_required
@require_POST
def org_switch(request: HttpRequest) -> HttpResponse:
    """The header's switcher: work in another organisation, back on the page you were on."""
    org = visible_org_named(request.user, request.POST.get("org", ""))
    if org is None:
        raise Http404("organisation not found")
    set_current_org(request, org)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = "overview"
    return redirect(target)
