"""The registry pages' buttons: POST views that call the registry's services and go
back to the page they came from with a message.

Each re-checks the role its button needs (`@project_page(Action.RUN)`, or REVIEW inside)
before the service checks the rest, and a service's refusal (RegistryError) is shown
as a message on the page, never as an error page.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.jobs.selectors import job_in
from controlplane.jobs.views import job_started
from controlplane.policies.errors import PolicyDenied
from controlplane.policies.pages import denied_show
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.registry import page_selectors as pages
from controlplane.registry import services
from controlplane.registry.errors import RegistryError
from controlplane.registry.forms import (
    AliasForm,
    DecisionForm,
    ModelDescriptionForm,
    ProtectedAliasesForm,
    RegisterForm,
    ThresholdsForm,
    VersionEditForm,
)
from controlplane.registry.models import PromotionRequest
from controlplane.registry.selectors import promotion_in, version_in
from controlplane.registry.views import model_or_404, to_model_page, to_version_page, version_or_404


def errors_text(errors, sep: str = " ") -> str:
    """ "field: problem problem" per field, joined by `sep`: form errors as one message."""
    return sep.join(f"{field}: {' '.join(problems)}" for field, problems in errors.items())


@project_page()
@require_POST
def model_edit(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    """The model's description (engineers, owners) or its promotion thresholds (REVIEW)."""
    model = model_or_404(project, name)
    if "thresholds" in request.POST and not request.can["review"]:
        raise PermissionDenied("only owners and compliance officers set promotion thresholds")
    if "thresholds" not in request.POST and not request.can["run"]:
        raise PermissionDenied("only engineers and owners edit a model's description")
    if "thresholds" in request.POST:
        form = ThresholdsForm(request.POST)
        changes = (
            {"promotion_thresholds": form.cleaned_data["thresholds"]} if form.is_valid() else None
        )
    else:
        form = ModelDescriptionForm(request.POST)
        changes = {"description": form.cleaned_data["description"]} if form.is_valid() else None
    if changes is None:
        messages.error(request, " ".join(str(e) for errs in form.errors.values() for e in errs))
        return to_model_page(project, model)
    try:
        services.model_update(model=model, actor=request.user, **changes)
    except RegistryError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"{model.name} updated.")
    return to_model_page(project, model)


@project_page(Action.RUN)
@require_POST
def alias_move(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    """Move an alias to a version, roll it back one step, or remove it. A protected alias
    opens a promotion request instead (the service decides)."""
    model = model_or_404(project, name)
    action = request.POST.get("action", "move")
    alias = request.POST.get("alias", "")
    reason = request.POST.get("reason", "")[:2000]
    try:
        if action == "rollback":
            outcome = services.alias_rollback(
                model=model, actor=request.user, alias=alias, reason=reason
            )
        elif action == "delete":
            services.alias_delete(model=model, actor=request.user, alias=alias)
            messages.success(request, f"@{alias} removed.")
            return to_model_page(project, model)
        else:
            numbers = [v.number for v in pages.ready_versions(model)]
            form = AliasForm(request.POST, numbers=numbers)
            if not form.is_valid():
                messages.error(request, errors_text(form.errors))
                return to_model_page(project, model)
            version = version_in(model, form.cleaned_data["version"])
            outcome = services.alias_set(
                model=model,
                actor=request.user,
                alias=form.cleaned_data["alias"],
                version=version,
                reason=form.cleaned_data["reason"],
            )
    except RegistryError as error:
        messages.error(request, str(error))
        return to_model_page(project, model)
    except PolicyDenied as error:
        denied_show(request, error)  # the model page shows it as a banner
        return to_model_page(project, model)
    if isinstance(outcome, PromotionRequest):
        messages.info(
            request,
            f"@{outcome.alias} is protected: promotion request {outcome.pk} for "
            f"v{outcome.version.number} waits for a reviewer.",
        )
    else:
        messages.success(request, f"@{outcome.name} now points at v{outcome.version.number}.")
    return to_model_page(project, model)


@project_page(Action.RUN)
@require_POST
def version_evaluate(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    """Start an `evaluate` job of the version, through the jobs' own service."""
    version = version_or_404(project, name, number)
    refused = []
    started = job_started(
        request,
        project,
        kind="evaluate",
        params={"model_version_id": version.pk},
        show_errors=lambda errors: refused.append(errors_text(errors, "; ")),
        note=f" to evaluate {version}",
    )
    if started:
        return started
    if refused:  # else the policy refused it: its banner is on the version page
        messages.error(request, "The evaluation was not started: " + "; ".join(refused))
    return to_version_page(project, version)


@project_page(Action.RUN)
@require_POST
def version_retrain(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    """Retrain a version flagged "trained on erased data" (gdpr/retrain.py)."""
    from controlplane.gdpr.errors import GdprError
    from controlplane.gdpr.retrain import retrain_start
    from controlplane.jobs.requests import JobRequestError

    version = version_or_404(project, name, number)
    try:
        job = retrain_start(version=version, actor=request.user)
    except GdprError as error:
        messages.error(request, f"Not retrained: {error}")
    except JobRequestError as error:
        messages.error(request, "Not retrained: " + errors_text(error.errors, "; "))
    except PolicyDenied as error:
        denied_show(request, error)
    else:
        messages.success(request, f"Job {job.pk} ({job.kind}) queued to retrain {version}.")
        return redirect("job-detail", project_id=project.pk, job_id=job.pk)
    return to_version_page(project, version)


@project_page(Action.RUN)
@require_POST
def version_edit(request: ProjectRequest, project: Project, name: str, number: int) -> HttpResponse:
    version = version_or_404(project, name, number)
    form = VersionEditForm(request.POST)
    if not form.is_valid():
        messages.error(request, errors_text(form.errors))
        return to_version_page(project, version)
    try:
        services.version_update(version=version, actor=request.user, **form.cleaned_data)
    except RegistryError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"{version} updated.")
    return to_version_page(project, version)


@project_page(Action.RUN)
@require_POST
def version_delete(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    version = version_or_404(project, name, number)
    try:
        services.version_delete(version=version, actor=request.user)
    except RegistryError as error:
        messages.error(request, str(error))
        return to_version_page(project, version)
    messages.success(request, f"{version} deleted; its number is not given out again.")
    return to_model_page(project, version.model)


@project_page()
@require_POST
def promotion_decide(request: ProjectRequest, project: Project, request_id: int) -> HttpResponse:
    """Approve or reject (owners, compliance; the service refuses the requester), or
    withdraw (the requester only)."""
    promotion = found_or_404(
        promotion_in(project, request_id), f"promotion request {request_id} not found"
    )
    to_queue = redirect("registry-reviews", project_id=project.pk)
    decision = request.POST.get("decision")
    if decision == "withdraw":
        if promotion.requested_by_id != request.user.pk:
            raise PermissionDenied("only the requester withdraws a promotion request")
    elif not request.can["review"]:
        raise PermissionDenied("only owners and compliance officers decide promotions")
    form = DecisionForm(request.POST)
    if decision != "withdraw" and not form.is_valid():
        messages.error(request, "Say approve or reject, and why.")
        return to_queue
    try:
        if decision == "withdraw":
            services.promotion_withdraw(request=promotion, actor=request.user)
        elif decision == "approve":
            services.promotion_approve(
                request=promotion, actor=request.user, reason=form.cleaned_data["reason"]
            )
        else:
            services.promotion_reject(
                request=promotion, actor=request.user, reason=form.cleaned_data["reason"]
            )
    except RegistryError as error:
        messages.error(request, str(error))
    except PolicyDenied as error:
        denied_show(request, error)  # the review queue shows it as a banner
    else:
        outcome = {"withdraw": "withdrawn", "approve": "approved"}.get(decision, "rejected")
        messages.success(
            request,
            f"Promotion of {promotion.model.name} v{promotion.version.number} to "
            f"@{promotion.alias} {outcome}.",
        )
    return to_queue


@project_page(Action.RUN)
@require_POST
def register(request: ProjectRequest, project: Project, job_id: int) -> HttpResponse:
    """ "Register this model" on a succeeded job's page: a new model or a new version."""
    job = found_or_404(job_in(project, job_id), f"job {job_id} not found in this project")
    form = RegisterForm(request.POST, model_names=pages.model_names_of(project))
    if not form.is_valid():
        messages.error(request, errors_text(form.errors))
        return redirect("job-detail", project_id=project.pk, job_id=job.pk)
    try:
        version = services.version_register(
            project=project,
            actor=request.user,
            job=job,
            model_name=form.cleaned_data["model_name"],
            create_model=form.cleaned_data["create_model"],
            description=form.cleaned_data["description"],
        )
    except RegistryError as error:
        messages.error(request, str(error))
        return redirect("job-detail", project_id=project.pk, job_id=job.pk)
    messages.success(request, f"Registered as {version}: its files are being copied and verified.")
    return to_version_page(project, version)


@project_page(Action.REVIEW)
@require_POST
def registry_settings_edit(request: ProjectRequest, project: Project) -> HttpResponse:
    """Which aliases of the project's models need a promotion request (owners, compliance)."""
    form = ProtectedAliasesForm(request.POST)
    if form.is_valid():
        try:
            services.registry_settings_update(
                project=project, actor=request.user, protected_aliases=form.cleaned_data["aliases"]
            )
        except RegistryError as error:
            problems = [" ".join(p) for p in error.fields.values()] or [str(error)]
            messages.error(request, "; ".join(problems))
        else:
            names = ", ".join(f"@{n}" for n in form.cleaned_data["aliases"]) or "none"
            messages.success(request, f"Protected aliases: {names}.")
    else:
        messages.error(request, " ".join(e for errs in form.errors.values() for e in errs))
    return redirect("registry-reviews", project_id=project.pk)
