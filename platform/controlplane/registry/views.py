"""The registry's pages: models, a model, a version (its card, files, evaluations, audit
timeline), the review queue, and the card and archive downloads.

Pages read through page_selectors and the shared selectors; their buttons post to
actions.py, which calls the registry's services (the ones the API calls), so a page can
do nothing the API would refuse. Buttons are hidden from roles that cannot use them.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.finops.model_cost import model_cost, model_version_cost
from controlplane.projects.models import Project
from controlplane.registry import page_selectors as pages
from controlplane.registry.archive import (
    ArchiveRefused,
    archive_folder,
    prepare_archive,
    tar_response,
)
from controlplane.registry.card import model_card_markdown, render_card
from controlplane.registry.forms import (
    AliasForm,
    DecisionForm,
    ModelDescriptionForm,
    ProtectedAliasesForm,
    ThresholdsForm,
    VersionEditForm,
)
from controlplane.registry.models import (
    ModelVersion,
    RegisteredModel,
    VersionState,
)
from controlplane.registry.selectors import (
    aliases_of,
    model_in,
    pending_promotions,
    policy_protected_aliases,
    protected_aliases,
    registry_protected_aliases,
    version_in,
)
from controlplane.storage import object_store


def model_or_404(project: Project, name: str) -> RegisteredModel:
    return found_or_404(model_in(project, name), f"model {name!r} not found in this project")


def version_or_404(project: Project, name: str, number: int) -> ModelVersion:
    model = model_or_404(project, name)
    return found_or_404(version_in(model, number), f"version {number} of {model.name} not found")


def to_model_page(project: Project, model: RegisteredModel) -> HttpResponse:
    return redirect("registry-model", project_id=project.pk, name=model.name)


def to_version_page(project: Project, version: ModelVersion) -> HttpResponse:
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
    model = model_or_404(project, name)
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
        # Every version, not only the table's newest: the model's cost is all its jobs.
        "cost": model_cost(list(model.versions.only("pk", "source_job_id"))),
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
def version_detail(
    request: ProjectRequest, project: Project, name: str, number: int
) -> HttpResponse:
    version = version_or_404(project, name, number)
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
        "cost": model_version_cost(version),
        "edit_form": VersionEditForm(
            initial={
                "intended_use": version.intended_use,
                "limitations": version.limitations,
                "description": version.description,
            }
        ),
    }
    return render(request, "registry/version_detail.html", context)


@project_page()
def version_card(request: ProjectRequest, project: Project, name: str, number: int) -> HttpResponse:
    version = version_or_404(project, name, number)
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
    version = version_or_404(project, name, number)
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
    setting = registry_protected_aliases(project)
    return render(
        request,
        "registry/reviews.html",
        {
            "project": project,
            "pending": list(pending_promotions(project)),
            "decided": pages.decided_promotions_of(project),
            "decision_form": DecisionForm(),
            "protected": setting,
            "policy_protected": [a for a in policy_protected_aliases(project) if a not in setting],
            "settings_form": ProtectedAliasesForm(initial={"aliases": ", ".join(setting)}),
        },
    )
