"""Two requests that would reach a view only to fail there, answered before it.

Refuse a NUL character in any query parameter, before any view or filter reads it.

PostgreSQL text cannot hold NUL, so every filter that passes a query value to the
database (the admin's list filters, `?state__exact=a%00b`, as much as our own lists)
would fail with a 500. The API's `text_param` names the parameter for the API's own
filters; this is the net under everything else, the pages and Django's admin included.

A write to an API path without its trailing slash: CommonMiddleware's APPEND_SLASH would
redirect it with a 301 (which clients follow as a GET, so a create turns into a list) or,
with DEBUG on, raise a RuntimeError (a 500). The API answers a 404 that names the path.
"""

from __future__ import annotations

from django.core.exceptions import BadRequest
from django.http import JsonResponse
from django.urls import is_valid_path

from controlplane.api.errors import error_body, json_error
from controlplane.api.handlers import is_api_request


class RejectNulInQueryMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # %00 is the only way a NUL reaches a query string (servers refuse a raw one);
        # the cheap test on the raw string keeps this free for every other request.
        query = request.META.get("QUERY_STRING", "")
        if "%00" not in query and "\x00" not in query:
            return self.get_response(request)
        names = [
            name
            for name, values in request.GET.lists()
            if "\x00" in name or any("\x00" in value for value in values)
        ]
        if names:
            message = "must not contain NUL characters"
            if is_api_request(request):
                fields = {name.replace("\x00", "\\0"): [message] for name in names}
                body = error_body(400, "invalid", "query parameters " + message, fields)
                return JsonResponse(body, status=400)
            raise BadRequest(f"query parameters {message}: {', '.join(names)}")
        return self.get_response(request)


class ApiPathWithoutSlashMiddleware:
    """Goes before CommonMiddleware, whose APPEND_SLASH handling it pre-empts for writes."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path_info
        if (
            is_api_request(request)
            and request.method not in ("GET", "HEAD", "OPTIONS")
            and not path.endswith("/")
            and is_valid_path(path + "/", getattr(request, "urlconf", None))
        ):
            return json_error(
                404, "not_found", f"no API endpoint at {path}; API paths end in /: {path}/"
            )
        return self.get_response(request)
