"""GET /metrics: the Prometheus scrape (who may read it: access.py; what: collectors.py)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client.exposition import choose_encoder

from controlplane.metrics.access import scrape_refusal
from controlplane.metrics.collectors import scrape_registry


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = scrape_refusal(request)
    if refusal is not None:
        response = HttpResponse(
            refusal.message + "\n", status=refusal.status, content_type="text/plain"
        )
        if refusal.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # Prometheus asks for OpenMetrics, which keeps the gauge histograms' type; other
    # clients get the classic text format.
    encode, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    response = HttpResponse(encode(scrape_registry()), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
