"""The finops pages: an organisation's rate card (current, history, a form for admins),
its webhook (admins: where, status, recent deliveries), a project's budget and quota
(spend this month against the budget, forms for who may set them).

Writes go through the services the API calls, so a page can do nothing the API would
refuse; another organisation's objects are 404, a refusal is shown on the page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from controlplane.finops import access, selectors, services, summaries
from controlplane.finops.errors import FinopsError, NotAllowed, NotFound
from controlplane.finops.models import StorageKind
from controlplane.finops.rates import DEFAULT_GPU


def _reach(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except NotFound as error:
        raise Http404(error.message) from None
    except NotAllowed as error:
        raise PermissionDenied(error.message) from None


# -- the rate card -------------------------------------------------------------------------


def rates_from_form(data) -> dict[str, Any]:
    """The rate card's shape from the form's fields; extra GPU types are typed one a line
    as `device name = rate`. A line without `=` keeps its text so the service names it."""
    gpu = {DEFAULT_GPU: data.get("gpu_hour_default", "")}
    for line in data.get("gpu_hour_devices", "").splitlines():
        if not line.strip():
            continue
        name, _, rate = line.rpartition("=")
        gpu[name.strip() or line.strip()] = rate.strip() if name.strip() else ""
    return {
        "cpu_hour": data.get("cpu_hour", ""),
        "gpu_hour": gpu,
        "storage_gb_month": {kind: data.get(f"storage_{kind}", "") for kind in StorageKind.values},
        "tokens_million": data.get("tokens_million", ""),
    }


def _form_values(card) -> dict[str, str]:
    if card is None:
        return {"currency": "EUR"}
    rates = card.rates
    values = {
        "currency": card.currency,
        "cpu_hour": rates["cpu_hour"],
        "gpu_hour_default": rates["gpu_hour"][DEFAULT_GPU],
        "gpu_hour_devices": "\n".join(
            f"{name} = {rate}" for name, rate in rates["gpu_hour"].items() if name != DEFAULT_GPU
        ),
        "tokens_million": rates["tokens_million"],
    }
    values.update({f"storage_{k}": v for k, v in rates["storage_gb_month"].items()})
    return values


@login_required
def rate_card(request: HttpRequest, slug: str) -> HttpResponse:
    org, admin = _reach(access.org_of, request.user, slug)
    current = selectors.current_rate_card(org)
    values, errors = _form_values(current), {}
    if request.method == "POST":
        if not admin:
            raise PermissionDenied("only the organisation's admins change its rate card")
        base = request.POST.get("base_version", "")
        try:
            card = services.rate_card_create(
                org=org,
                actor=request.user,
                rates=rates_from_form(request.POST),
                currency=request.POST.get("currency", "").strip().upper(),
                reason=request.POST.get("reason", ""),
                base_version=int(base) if base.isdigit() else None,
            )
        except FinopsError as error:
            values = {key: request.POST.get(key, "") for key in request.POST}
            errors = {"message": error.message, "fields": error.fields or {}}
        else:
            messages.success(request, f"Rate card v{card.version} is in force from now.")
            return redirect("finops:rate-card", slug=org.slug)
    history = []
    previous = None
    for card in reversed(list(selectors.rate_cards_of(org)[:100])):
        history.append(
            {
                "card": card,
                "diff": services.rates_diff(previous.rates if previous else None, card.rates),
            }
        )
        previous = card
    return render(
        request,
        "finops/rate_card.html",
        {
            "org": org,
            "admin": admin,
            "current": current,
            "history": list(reversed(history)),
            "values": values,
            "errors": errors,
            "storage_fields": [
                (kind, label, values.get(f"storage_{kind}", ""))
                for kind, label in StorageKind.choices
            ],
        },
    )


# -- the webhook ---------------------------------------------------------------------------


@login_required
def webhook(request: HttpRequest, slug: str) -> HttpResponse:
    org, _admin = _reach(access.org_of, request.user, slug, admin=True)
    if request.method == "POST":
        secret = request.POST.get("secret", "")
        try:
            services.webhook_set(
                org=org,
                actor=request.user,
                url=request.POST.get("url", ""),
                # Blank keeps the current secret; the box below removes it.
                secret="" if request.POST.get("remove_secret") else (secret or None),
                enabled=bool(request.POST.get("enabled")),
            )
        except FinopsError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, "Webhook saved.")
        return redirect("finops:webhook", slug=org.slug)
    return render(
        request, "finops/webhook.html", {"org": org, "hook": summaries.webhook_summary(org)}
    )


# -- a project's budget and quota ------------------------------------------------------------


@login_required
def project_budget(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _reach(access.project_of, request.user, project_id)
    if request.method == "POST":
        _post_budget_or_quota(request, project)
        return redirect("finops:project-budget", project_id=project.pk)
    return render(
        request,
        "finops/project_budget.html",
        {
            "project": project,
            "budget": summaries.budget_summary(project),
            "quota": summaries.quota_summary(project),
            "can_set_budget": selectors.can_set_budget(request.user, project),
            "can_set_quota": selectors.can_set_quota(request.user, project),
        },
    )


def _post_budget_or_quota(request: HttpRequest, project) -> None:
    form = request.POST.get("form")
    try:
        if form == "budget":
            services.budget_set(
                project=project,
                actor=request.user,
                month=timezone.now().date(),
                amount=request.POST.get("amount", ""),
                hard_stop=bool(request.POST.get("hard_stop")),
                recurring=bool(request.POST.get("recurring")),
            )
            messages.success(request, "Budget saved.")
        elif form == "quota":
            services.quota_set(
                project=project,
                actor=request.user,
                max_concurrent_gpu_jobs=request.POST.get("max_concurrent_gpu_jobs", "").strip(),
                max_gpus=request.POST.get("max_gpus", "").strip(),
            )
            messages.success(request, "Quota saved.")
        else:
            messages.error(request, "Unknown form.")
    except NotAllowed as error:
        raise PermissionDenied(error.message) from None
    except FinopsError as error:
        messages.error(request, error.message)
