"""The shell's pages: the overview across the user's projects, and the health probes.

Each app's pages live in its own views.py (projects, uploads, datasets, jobs, audit).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from controlplane.dashboard.selectors import overview_for
from controlplane.health import liveness_report, readiness_report


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: cheap (no network call), always 200; names the dependencies seen failing."""
    return JsonResponse(liveness_report())


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database, broker, object store and cache checked, each with its latency;
    503 only when the database does not answer (see controlplane/health.py)."""
    report, ready = readiness_report()
    return JsonResponse(report, status=200 if ready else 503)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/overview.html", overview_for(request.user))
