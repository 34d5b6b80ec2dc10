"""Django's error views, answering in the API's JSON error shape under /api/.

DRF turns errors raised inside an API view into JSON; these cover what happens before a
view runs (no URL matches, a body over DATA_UPLOAD_MAX_MEMORY_SIZE, an error in a
middleware). Pages get Django's error views with our templates (templates/404.html, 403.html,
400.html, 500.html on templates/error_layout.html: a way back, no database query).
"""

from __future__ import annotations

import sys

from django.core.exceptions import RequestDataTooBig
from django.views import defaults

from controlplane.api.errors import RETRY_AFTER_SECONDS, as_api_exception, json_error

API_PREFIX = "/api/"


def is_api_request(request) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request, exception, template_name=defaults.ERROR_400_TEMPLATE_NAME):
    if not is_api_request(request):
        return defaults.bad_request(request, exception, template_name)
    if isinstance(exception, RequestDataTooBig):
        return json_error(
            413, "too_large", f"the request body is larger than the limit: {exception}"
        )
    return json_error(400, "bad_request", str(exception) or "the request is malformed")


def permission_denied(request, exception, template_name=defaults.ERROR_403_TEMPLATE_NAME):
    if not is_api_request(request):
        return defaults.permission_denied(request, exception, template_name)
    return json_error(403, "permission_denied", str(exception) or "permission denied")


def page_not_found(request, exception, template_name=defaults.ERROR_404_TEMPLATE_NAME):
    if not is_api_request(request):
        return defaults.page_not_found(request, exception, template_name)
    return json_error(404, "not_found", f"no API endpoint at {request.path}; see /api/v1/docs/")


def server_error(request, template_name=defaults.ERROR_500_TEMPLATE_NAME):
    if not is_api_request(request):
        return defaults.server_error(request, template_name)
    # Django calls this view inside its `except` block, so the error is still at hand: a
    # database or store outage met in a middleware says so (503 + Retry-After), like in a view.
    # django.request has logged the traceback already.
    mapped = as_api_exception(sys.exc_info()[1]) if sys.exc_info()[1] is not None else None
    if mapped is not None and mapped.status_code >= 500:
        headers = {"Retry_After": str(RETRY_AFTER_SECONDS)} if mapped.status_code == 503 else {}
        return json_error(mapped.status_code, mapped.default_code, str(mapped.detail), **headers)
    return json_error(500, "server_error", "an unexpected error occurred; it has been logged")
