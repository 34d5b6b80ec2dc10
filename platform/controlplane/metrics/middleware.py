"""API latency per route and method, observed around the whole middleware stack.

Labels stay few whatever clients send: the route is the URL *pattern* that matched
(`/api/v1/projects/<int:project_id>/`, never the path with its ids), an unknown method is
"other" and the status is its class (2xx ... 5xx).

Under gunicorn each worker process counts its own requests: with PROMETHEUS_MULTIPROC_DIR
set (before the process starts), prometheus_client keeps the counts in files there and
/metrics sums every process's files (the child_exit hook in gunicorn_conf.py tidies after
a dead worker). Without it the counts live in this process's memory, which is right for
`manage.py runserver` and the tests, and wrong for several workers behind one port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from prometheus_client import Histogram

logger = logging.getLogger(__name__)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"

# Not in prometheus_client's default registry: /metrics builds its registry per scrape.
HTTP_REQUEST_DURATION = Histogram(
    "controlplane_http_request_duration_seconds",
    "Time from the request's arrival to its response headers, by URL pattern, method and status class",
    labelnames=["route", "method", "status"],
    # Up to 30 s: uploads and exports are long; past it the gunicorn timeout is near.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=None,
)


class RequestLatencyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - start
        # The same figure for the browser's developer tools (and the browser tests, which
        # assert pages stay fast): `Server-Timing: app;dur=12.3` in milliseconds.
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.1f}"
        try:
            HTTP_REQUEST_DURATION.labels(
                route=route_of(request),
                method=request.method if request.method in KNOWN_METHODS else "other",
                status=f"{response.status_code // 100}xx",
            ).observe(elapsed)
        except OSError as error:
            # The multiprocess folder full or gone: one figure lost, never the request.
            logger.warning("metrics: request latency not recorded: %s", error)
        return response


def route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None or not match.route:
        return UNMATCHED_ROUTE
    return "/" + match.route.lstrip("^")
