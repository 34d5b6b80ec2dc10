"""The registry's pages: models, a model, a version (its card, files, evaluations, audit
timeline), the review queue, and the POST actions their buttons send.

Every page reads through page_selectors and every action goes through the registry's
services, the same ones the API calls, so a page can do nothing the API would refuse.
Buttons are hidden from roles that cannot use them, and each POST view checks the role
again (`@project_page(Action.RUN)` / REVIEW) before the service checks the rest.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.jobs.selectors import job_in
from controlplane.jobs.views import job_started
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.registry import page_selectors as pages
from controlplane.registry import services
from controlplane.registry.archive import (
    ArchiveRefused,
    archive_folder,
    prepare_archive,
    tar_response,
)
from controlplane.registry.card import model_card_markdown, render_card
from controlplane.registry.errors import RegistryError
from controlplane.registry.forms import (
    AliasForm,
    DecisionForm,
    ModelDescriptionForm,
    RegisterForm,
    ThresholdsForm,
    VersionEditForm,
)
from controlplane.registry.models import (
    ModelVersion,
    PromotionRequest,
    RegisteredModel,
    VersionState,
)
from controlplane.registry.selectors import (
    aliases_of,
    model_in,
    pending_promotions,
    promotion_in,
    protected_aliases,
    version_in,
)
from controlplane.storage import object_store


def _model(project: Project, name: str) -> RegisteredModel:
    return found_or_404(model_in(project, name), f"model {name!r} not found in this project")


def _version(project: Project, name: str, number: int) -> ModelVersion:
    model = _model(project, name)
    return found_or_404(version_in(model, number), f"version {number} of {model.name} not found")


def _to_model(project: Project, model: RegisteredModel) -> HttpResponse:
    return redirect("registry-model", project_id=project.pk, name=model.name)


def _to_version(project: Project, version: ModelVersion) -> HttpResponse:
    return redirect(
        "registry-version", project_id=project.pk, name=version.model.name, number=version.number
    )


@project_page()
def model_list(request: ProjectRequest, project: Project) -> HttpResponse:
    return render(
        request,
        "registry/model_list.html",
        {
            "project": project,
            "models": pages.models_page(project),
            # Model names are URL-safe (MODEL_NAME_PATTERN): one reverse for the page.
            "base": reverse("registry-models", args=[project.pk]),
        },
    )


@project_page()
def model_detail(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    model = _model(project, name)
    versions = pages.versions_table(model)
    ready = [v.number for v in versions if v.state == VersionState.READY]
    context = {
        "project": project,
        "model": model,
        "versions": versions,
        "aliases": list(aliases_of(model)),
        "pending": pages.pending_of_model(model),
        "protected": protected_aliases(project),
        "lineage": pages.model_lineage(model, versions),
        "alias_form": AliasForm(numbers=ready, initial={"version": ready[0] if ready else None}),
        "thresholds_form": ThresholdsForm(
            initial={"thresholds": ThresholdsForm.as_text(model.promotion_thresholds)}
        ),
        "description_form": ModelDescriptionForm(initial={"description": model.description}),
        "compare": _comparison(request, versions),
    }
    return render(request, "registry/model_detail.html", context)


def _comparison(request: ProjectRequest, versions: list[ModelVersion]) -> dict | None:
    """Two versions chosen with ?a=&b= (default: the two newest ready ones) side by side."""
    by_number = {v.number: v for v in versions if v.state != VersionState.DELETED}
    chosen = []
    for key in ("a", "b"):
        text = request.GET.get(key, "")
        if text.isascii() and text.isdigit() and int(text) in by_number:
            chosen.append(by_number[int(text)])
    if len(chosen) != 2:
        ready = [v for v in versions if v.state == VersionState.READY]
        if len(ready) < 2:
            return None
        chosen = [ready[1], ready[0]]
    return pages.evaluation_comparison(chosen[0], chosen[1])


@project_page()
@require_POST
def model_edit(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    """The model's description (engineers, owners) or its promotion thresholds (REVIEW)."""
    model = _model(project, name)
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
        return _to_model(project, model)
    try:
        services.model_update(model=model, actor=request.user, **changes)
    except RegistryError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"{model.name} updated.")
    return _to_model(project, model)


@project_page(Action.RUN)
@require_POST
def alias_move(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    """Move an alias to a version, roll it back one step, or remove it. A protected alias
    opens a promotion request instead (the service decides)."""
    model = _model(project, name)
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
            return _to_model(project, model)
        else:
            numbers = [v.number for v in pages.ready_versions(model)]
            form = AliasForm(request.POST, numbers=numbers)
            if not form.is_valid():
                messages.error(
                    request, " ".join(f"{f}: {' '.join(e)}" for f, e in form.errors.items())
                )
                return _to_model(project, model)
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
        return _to_model(project, model)
    if isinstance(outcome, PromotionRequest):
        messages.info(
            request,
            f"@{outcome.alias} is protected: promotion request {outcome.pk} for "
            f"v{outcome.version.number} waits for a reviewer.",
        )
    else:
        messages.success(request, f"@{outcome.name} now points at v{outcome.version.number}.")
    return _to_model(project, model)


@project_page()
def version_detail(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    version = _version(project, name, number)
    evaluations = pages.evaluations_of(version)
    history, actors = pages.version_history(version)
    finished = [e for e in evaluations if e.finished_at is not None]
    card = model_card_markdown(
        version,
        events=history[::-1],
        evaluation=max(finished, key=lambda e: (e.finished_at, e.pk), default=None),
    )
    context = {
        "project": project,
        "model": version.model,
        "version": version,
        "card_html": render_card(card),
        "files": list(version.files.all()),
        "evaluations": evaluations,
        "evaluation_charts": pages.evaluation_charts(evaluations),
        "history": history,
        "actors": actors,
        "edit_form": VersionEditForm(
            initial={
                "intended_use": version.intended_use,
                "limitations": version.limitations,
                "description": version.description,
            }
        ),
    }
    return render(request, "registry/version_detail.html", context)


@project_page(Action.RUN)
@require_POST
def version_evaluate(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    """Start an `evaluate` job of the version, through the jobs' own service."""
    version = _version(project, name, number)
    refused = []
    started = job_started(
        request,
        project,
        kind="evaluate",
        params={"model_version_id": version.pk},
        show_errors=lambda errors: refused.extend(
            f"{field}: {' '.join(problems)}" for field, problems in errors.items()
        ),
        note=f" to evaluate {version}",
    )
    if started:
        return started
    messages.error(request, "The evaluation was not started: " + "; ".join(refused))
    return _to_version(project, version)


@project_page(Action.RUN)
@require_POST
def version_edit(request: ProjectRequest, project: Project, name: str, number: int) -> HttpResponse:
    version = _version(project, name, number)
    form = VersionEditForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(f"{f}: {' '.join(e)}" for f, e in form.errors.items()))
        return _to_version(project, version)
    try:
        services.version_update(version=version, actor=request.user, **form.cleaned_data)
    except RegistryError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"{version} updated.")
    return _to_version(project, version)


@project_page(Action.RUN)
@require_POST
def version_delete(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    version = _version(project, name, number)
    try:
        services.version_delete(version=version, actor=request.user)
    except RegistryError as error:
        messages.error(request, str(error))
        return _to_version(project, version)
    messages.success(request, f"{version} deleted; its number is not given out again.")
    return _to_model(project, version.model)


@project_page()
def version_card(request: ProjectRequest, project: Project, name: str, number: int) -> HttpResponse:
    version = _version(project, name, number)
    response = HttpResponse(
        model_card_markdown(version), content_type="text/markdown; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{archive_folder(version)}-card.md"'
    return response


@project_page()
def version_archive(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    """The export archive, streamed; refused (409 page, audited) when a file no longer
    matches its sha256."""
    version = _version(project, name, number)
    store = object_store()
    try:
        members = prepare_archive(version, store, actor=request.user)
    except ArchiveRefused as error:
        return render(
            request,
            "registry/archive_refused.html",
            {"project": project, "model": version.model, "version": version, "problem": str(error)},
            status=error.status,
        )
    return tar_response(version, members, store)


@project_page()
def review_queue(request: ProjectRequest, project: Project) -> HttpResponse:
    return render(
        request,
        "registry/reviews.html",
        {
            "project": project,
            "pending": list(pending_promotions(project)),
            "decided": pages.decided_promotions_of(project),
            "decision_form": DecisionForm(),
        },
    )


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
        messages.error(request, " ".join(f"{f}: {' '.join(e)}" for f, e in form.errors.items()))
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
    return _to_version(project, version)
