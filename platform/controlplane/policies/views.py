"""The compliance pages: a project's policy (a card and a form per rule, its history), the
platform default (staff), a project's compliance page (violations, waivers, erasure
holds, pending approvals, recent denials, scans) and the staff overview of every project.

The project pages are addressed by the project's slug (gates.policy_url links refusals to
`.../compliance/policy/#rule-<key>`) and checked by the same `project_page` as every other
page. Writes go through the policy services (the ones the API calls), so a page can do
nothing the API would refuse; a refusal is shown on the page, never as an error page.
"""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.policies import page_selectors as pages
from controlplane.policies import selectors, services
from controlplane.policies.errors import Conflict, NotAllowed, PolicyError
from controlplane.policies.forms import (
    AssignForm,
    CommentForm,
    HoldForm,
    ResolveForm,
    WaiverForm,
    rule_form,
)
from controlplane.policies.rules import RULES
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.projects.selectors import members_of, membership_of


def compliance_page(action: Action = Action.VIEW):
    """`project_page(action)` for a URL that names the project by its slug. An unknown
    slug is the same 404 as a project the caller is not in."""

    def decorate(view):
        checked = project_page(action)(view)

        @wraps(view)
        def wrapper(request, project_slug: str, *args, **kwargs):
            project_id = pages.project_id_by_slug(project_slug) or 0
            return checked(request, project_id, *args, **kwargs)

        return wrapper

    return decorate


def staff_page(view):
    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("platform staff only")
        return view(request, *args, **kwargs)

    return wrapper


def _error_text(error: PolicyError) -> str:
    if error.fields:
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in error.fields.items())
    return error.message


# -- the policy pages --------------------------------------------------------------------


@compliance_page()
def project_policy(request: ProjectRequest, project: Project) -> HttpResponse:
    return _policy_page(request, project)


@staff_page
def policy_default(request: HttpRequest) -> HttpResponse:
    return _policy_page(request, None)


@login_required
def org_policy(request: HttpRequest, org_slug: str) -> HttpResponse:
    """An organisation's default policy: its members read it, its admins edit it."""
    from controlplane.orgs.selectors import OrgNotFound, org_for

    try:
        org, _role = org_for(request.user, org_slug)
    except OrgNotFound as error:
        raise Http404(str(error)) from None
    return _policy_page(request, None, org)


def _policy_page(request: HttpRequest, project: Project | None, organisation=None) -> HttpResponse:
    """Every rule as a card; for those who may edit, a form per rule. A post edits one
    rule: on success back to its card, on a field error the form again with the errors,
    on a concurrent edit (409) the typed values kept and what changed meanwhile shown.
    ``organisation`` (project None): that organisation's default."""
    scope = project if project is not None else organisation
    can_edit = services.can_edit_policy(request.user, project, organisation)
    bound, status, conflict = None, 200, None
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied("editing this policy needs the owner or compliance role")
        key = request.POST.get("rule", "")
        if key not in RULES:
            messages.error(request, "Pick a rule to change.")
            return redirect(request.path)
        snapshot = selectors.policy_in_force(scope)
        version = selectors.current_number(scope)
        form = rule_form(key, snapshot.rules[key], version, data=request.POST)
        if form.is_valid():
            try:
                saved = services.policy_update(
                    project=project,
                    organisation=organisation,
                    actor=request.user,
                    changes={key: form.changes()},
                    reason=form.cleaned_data["reason"],
                    base_version=form.cleaned_data["base_version"],
                )
            except Conflict:
                seen = form.cleaned_data["base_version"]
                conflict = {
                    "seen": seen,
                    "now": version,
                    "versions": pages.versions_since(scope, seen),
                }
                # The editor's values stay; submitting again applies them on top of the
                # version they have now been shown, never silently over an unseen one.
                data = request.POST.copy()
                data[form.add_prefix("base_version")] = str(version)
                form = rule_form(key, snapshot.rules[key], version, data=data)
                status = 409
            except NotAllowed as error:
                raise PermissionDenied(error.message) from None
            except PolicyError as error:
                form.add_service_errors(error.fields, error.message)
                status = 400
            else:
                messages.success(
                    request,
                    f"Rule {RULES[key].number} ({RULES[key].title}) saved: {saved.label}.",
                )
                return redirect(f"{request.path}#rule-{key}")
        else:
            status = 400
        bound = (key, form)
    snapshot = selectors.policy_in_force(scope)
    version = selectors.current_number(scope)
    rules = pages.rules_view(snapshot.rules)
    if can_edit:
        for rule in rules:
            if bound and bound[0] == rule.key:
                rule.form = bound[1]
            else:
                rule.form = rule_form(rule.key, snapshot.rules[rule.key], version)
    context = {
        "project": project,
        "org": organisation,
        "label": snapshot.label,
        "version": version,
        "follows_default": scope is not None and version == 0,
        "rules": rules,
        "can_edit": can_edit,
        "conflict": conflict,
        "history": pages.history(scope),
    }
    return render(request, "policies/policy.html", context, status=status)


# -- a project's compliance page ---------------------------------------------------------


def _compliance_context(request: ProjectRequest, project: Project, **forms) -> dict:
    snapshot = selectors.policy_in_force(project)
    members = [(m.user_id, m.user.username) for m in members_of(project)]
    violations = pages.open_violations_by_rule(project)
    if request.can["review"]:
        for group in violations:
            for violation in group.violations:
                violation.assign_form = AssignForm(
                    members=members, initial={"assignee": violation.assigned_to_id}
                )
    context = {
        "project": project,
        "label": snapshot.label,
        "version": selectors.current_number(project),
        "rules": pages.rules_view(snapshot.rules),
        "violations": violations,
        "waivers": pages.active_waivers(project),
        "holds": pages.active_holds(project),
        "promotions": _pending_promotions(project),
        "denials": pages.recent_denials(project),
        "scans": pages.recent_scans(project),
        "is_compliance_officer": request.project_role == "compliance",
        "comment_form": CommentForm(),
        "resolve_form": ResolveForm(),
    }
    if context["is_compliance_officer"]:
        context["waiver_form"] = forms.get("waiver_form") or WaiverForm()
    if request.can["review"]:
        context["hold_form"] = forms.get("hold_form") or HoldForm(
            versions=pages.hold_choices(project)
        )
    return context


def _pending_promotions(project: Project):
    from controlplane.registry.selectors import pending_promotions

    return pending_promotions(project)


@compliance_page()
def project_compliance(request: ProjectRequest, project: Project) -> HttpResponse:
    return render(request, "policies/compliance.html", _compliance_context(request, project))


def to_compliance_page(project: Project, anchor: str = "") -> HttpResponse:
    url = reverse("project_compliance", args=[project.slug])
    return redirect(f"{url}#{anchor}" if anchor else url)


def _done(request, project: Project, anchor: str, call, success: str) -> HttpResponse:
    """Run a service call; its refusal is a message on the compliance page."""
    try:
        call()
    except PolicyError as error:
        messages.error(request, _error_text(error))
    else:
        messages.success(request, success)
    return to_compliance_page(project, anchor)


@compliance_page()
@require_POST
def violation_assign(request: ProjectRequest, project: Project, violation_id: int) -> HttpResponse:
    from controlplane.policies.violations import violation_assign as assign

    violation = found_or_404(selectors.violation_in(project, violation_id), "no such violation")
    members = [(m.user_id, m.user.username) for m in members_of(project)]
    form = AssignForm(request.POST, members=members)
    if not form.is_valid():
        messages.error(request, "Pick a member of the project.")
        return to_compliance_page(project, f"violation-{violation.pk}")
    chosen = form.cleaned_data["assignee"]
    membership = membership_of(project, chosen) if chosen is not None else None
    assignee = membership.user if membership is not None else None
    who = assignee.username if assignee else "nobody"
    return _done(
        request,
        project,
        f"violation-{violation.pk}",
        lambda: assign(violation=violation, actor=request.user, assignee=assignee),
        f"Violation assigned to {who}.",
    )


@compliance_page()
@require_POST
def violation_comment(request: ProjectRequest, project: Project, violation_id: int) -> HttpResponse:
    from controlplane.policies.violations import violation_comment as comment

    violation = found_or_404(selectors.violation_in(project, violation_id), "no such violation")
    form = CommentForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Write a comment (at most 4,000 characters).")
        return to_compliance_page(project, f"violation-{violation.pk}")
    return _done(
        request,
        project,
        f"violation-{violation.pk}",
        lambda: comment(violation=violation, actor=request.user, text=form.cleaned_data["text"]),
        "Comment added.",
    )


@compliance_page(Action.REVIEW)
@require_POST
def violation_resolve(request: ProjectRequest, project: Project, violation_id: int) -> HttpResponse:
    from controlplane.policies.violations import violation_resolve as resolve

    violation = found_or_404(selectors.violation_in(project, violation_id), "no such violation")
    form = ResolveForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why the violation is resolved.")
        return to_compliance_page(project, f"violation-{violation.pk}")
    return _done(
        request,
        project,
        "violations",
        lambda: resolve(
            violation=violation, actor=request.user, resolution=form.cleaned_data["resolution"]
        ),
        f"Violation by {violation.subject_label} resolved.",
    )


@compliance_page(Action.REVIEW)
@require_POST
def waiver_grant(request: ProjectRequest, project: Project) -> HttpResponse:
    from controlplane.policies.waivers import waiver_grant as grant

    if request.project_role != "compliance":
        raise PermissionDenied("granting a waiver needs the compliance role in this project")
    form = WaiverForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            waiver = grant(project=project, actor=request.user, **data)
        except PolicyError as error:
            if error.status == 403:
                raise PermissionDenied(error.message) from None
            for name, problems in error.fields.items():
                form.add_error(name if name in form.fields else None, problems)
            if not error.fields:
                form.add_error(None, error.message)
        else:
            messages.success(
                request,
                f"Rule {RULES[waiver.rule].number} waived for {waiver.subject_label} until "
                f"{waiver.expires_at:%Y-%m-%d %H:%M}.",
            )
            return to_compliance_page(project, "waivers")
    context = _compliance_context(request, project, waiver_form=form)
    return render(request, "policies/compliance.html", context, status=400)


@compliance_page(Action.REVIEW)
@require_POST
def waiver_revoke(request: ProjectRequest, project: Project, waiver_id: int) -> HttpResponse:
    from controlplane.policies.waivers import waiver_revoke as revoke

    waiver = found_or_404(selectors.waiver_in(project, waiver_id), "no such waiver")
    reason = request.POST.get("reason", "")[:2000]
    return _done(
        request,
        project,
        "waivers",
        lambda: revoke(waiver=waiver, actor=request.user, reason=reason),
        f"Waiver for {waiver.subject_label} revoked.",
    )


@compliance_page(Action.REVIEW)
@require_POST
def hold_place(request: ProjectRequest, project: Project) -> HttpResponse:
    from controlplane.policies.waivers import hold_place as place

    form = HoldForm(request.POST, versions=pages.hold_choices(project))
    if form.is_valid():
        data = form.cleaned_data
        try:
            hold = place(
                project=project,
                actor=request.user,
                dataset_version_id=data["dataset_version"],
                reference=data["reference"],
                reason=data["reason"],
            )
        except PolicyError as error:
            form.add_error(None, _error_text(error))
        else:
            messages.success(request, f"Erasure hold {hold.reference} placed.")
            return to_compliance_page(project, "holds")
    context = _compliance_context(request, project, hold_form=form)
    return render(request, "policies/compliance.html", context, status=400)


@compliance_page(Action.REVIEW)
@require_POST
def hold_release(request: ProjectRequest, project: Project, hold_id: int) -> HttpResponse:
    from controlplane.policies.waivers import hold_release as release

    hold = found_or_404(selectors.hold_in(project, hold_id), "no such erasure hold")
    return _done(
        request,
        project,
        "holds",
        lambda: release(hold=hold, actor=request.user),
        f"Erasure hold {hold.reference} released.",
    )


@compliance_page(Action.REVIEW)
@require_POST
def scan_now(request: ProjectRequest, project: Project) -> HttpResponse:
    """Queue a violation scan of the project (a job on the cpu queue)."""
    from controlplane.policies.scan import scan_request

    return _done(
        request,
        project,
        "scans",
        lambda: scan_request(project=project, actor=request.user),
        "Scan queued: violations appear here when it finishes.",
    )


# -- the staff overview ------------------------------------------------------------------


@staff_page
def compliance_overview(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "policies/overview.html",
        {
            "rows": pages.overview(),
            "days": pages.OVERVIEW_DAYS,
            "default": selectors.current_number(None),
        },
    )
