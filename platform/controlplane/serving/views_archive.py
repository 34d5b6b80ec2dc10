"""The inference archive's pages: a deployment's requests (search form, table, export) and
one request in full (input, output, guardrail decisions, timings, caller).

Viewers and up (compliance officers included) read them; another project's user gets a
404. The export link streams the same JSONL as the API, under the page's session.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.core.exceptions import BadRequest
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import path

from controlplane.api.params import QueryParamError, clean_choice, clean_text
from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.projects.models import Project
from controlplane.serving import archive
from controlplane.serving.api_archive import export_response, parse_id, parse_time
from controlplane.serving.models import Deployment
from workers.serve.protocol import Endpoint, RecordStatus

PAGE_SIZE = 50
# Strings longer than this (a base64 image) are shortened in the record's JSON views.
SHOWN_STRING_CHARS = 2000
FILTER_NAMES = ("since", "until", "token_id", "user_id", "subject", "status", "endpoint")


def deployment_or_404(project: Project, name: str) -> Deployment:
    return found_or_404(
        Deployment.objects.filter(project=project, name=name).first(),
        f"deployment {name!r} not found in this project",
    )


def page_filters(request) -> tuple[dict, dict, list[str]]:
    """(search() filters, the form's values, errors) from the page's query string.

    A bad value is shown as an error next to the form (and that filter left out), rather
    than a bare 400 page: the form is where the user typed it.
    """
    form = {name: request.GET.get(name, "") for name in FILTER_NAMES}
    filters: dict = {}
    errors: list[str] = []
    readers = {
        "since": lambda v: parse_time("since", v),
        "until": lambda v: parse_time("until", v),
        "token_id": lambda v: parse_id("token_id", v),
        "user_id": lambda v: parse_id("user_id", v),
        "subject": lambda v: v,
        "status": lambda v: clean_choice("status", v, [s.value for s in RecordStatus]),
        "endpoint": lambda v: clean_choice("endpoint", v, [e.value for e in Endpoint]),
    }
    for name, read in readers.items():
        try:
            text = clean_text(name, form[name], max_length=320)
            filters[name] = read(text) if text else None
        except QueryParamError as error:
            errors.append(str(error))
        except ValueError as error:
            errors.append(str(error))
    return filters, form, errors


@project_page()
def request_list(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    deployment = deployment_or_404(project, name)
    filters, form, errors = page_filters(request)
    rows = archive.search(deployment, **{k: v for k, v in filters.items() if v is not None})
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    query = urlencode({k: v for k, v in form.items() if v})
    return render(
        request,
        "serving/archive_list.html",
        {
            "project": project,
            "deployment": deployment,
            "page": page,
            "form": form,
            "errors": errors,
            "query": query,
            "statuses": [s.value for s in RecordStatus],
            "endpoints": [e.value for e in Endpoint],
            "usernames": _usernames(r.user_id for r in page),
            "retention_days": archive.retention_days_of(project),
        },
    )


@project_page()
def request_export(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    deployment = deployment_or_404(project, name)
    filters, _form, errors = page_filters(request)
    if errors:
        raise BadRequest("; ".join(errors))
    return export_response(
        deployment, {k: v for k, v in filters.items() if v is not None}, request.user
    )


@project_page()
def request_detail(
    request: ProjectRequest, project: Project, name: str, request_id: str
) -> HttpResponse:
    deployment = deployment_or_404(project, name)
    row = found_or_404(
        archive.record_in(deployment, request_id),
        f"no archived request {request_id} in {deployment.name}",
    )
    record, unavailable = None, ""
    try:
        record = archive.read_record(row)
    except archive.RecordUnavailable as error:
        unavailable = str(error)
    context = {
        "project": project,
        "deployment": deployment,
        "row": row,
        "record": record,
        "unavailable": unavailable,
        "usernames": _usernames([row.user_id]),
    }
    if record is not None:
        context.update(
            caller=record.get("caller") if isinstance(record.get("caller"), dict) else {},
            request_json=_shown(record.get("request")),
            response_json=_shown(record.get("response")),
            error=record.get("error") if isinstance(record.get("error"), dict) else None,
            guardrails=_guardrail_rows(record.get("guardrails")),
            timings=_dict_of(record.get("timings")),
            usage=_dict_of(record.get("usage")),
            images=_images(record.get("response")),
        )
    return render(request, "serving/archive_detail.html", context)


# -- helpers -------------------------------------------------------------------------------


def _usernames(user_ids) -> dict[int, str]:
    ids = {i for i in user_ids if i is not None}
    if not ids:
        return {}
    return dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))


def _dict_of(value) -> dict:
    return value if isinstance(value, dict) else {}


def _shorten(value):
    if isinstance(value, str) and len(value) > SHOWN_STRING_CHARS:
        return f"{value[:200]}… ({len(value):,} characters)"
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    return value


def _shown(value) -> str:
    if value is None:
        return ""
    return json.dumps(_shorten(value), indent=2, ensure_ascii=False)


def _guardrail_rows(guardrails) -> list[dict]:
    """One row per side (input, output): what was found and what was done about it."""
    rows = []
    for side in ("input", "output"):
        decisions = _dict_of(_dict_of(guardrails).get(side))
        if not decisions:
            continue
        pii = _dict_of(decisions.get("pii"))
        rows.append(
            {
                "side": side,
                "pii": ", ".join(f"{kind} ×{count}" for kind, count in sorted(pii.items())),
                "pii_action": decisions.get("pii_action", ""),
                "toxicity": decisions.get("toxicity"),
                "toxicity_action": decisions.get("toxicity_action", ""),
            }
        )
    return rows


def _images(response) -> list[str]:
    """data: URLs of the images an images.generations answer holds (the CSP allows data:)."""
    images = []
    for item in _dict_of(response).get("data") or []:
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(b64, str) and b64 and len(b64) < 8 * 1024 * 1024:
            images.append(f"data:image/png;base64,{b64}")
    return images


DEPLOYMENT = "projects/<int:project_id>/deployments/<str:name>/"

page_urlpatterns = [
    path(DEPLOYMENT + "requests/", request_list, name="serving-requests"),
    path(DEPLOYMENT + "requests/export.jsonl", request_export, name="serving-requests-export"),
    path(DEPLOYMENT + "requests/<str:request_id>/", request_detail, name="serving-request"),
]
