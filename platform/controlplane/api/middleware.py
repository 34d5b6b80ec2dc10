"""Refuse a NUL character in any query parameter, before any view or filter reads it.

PostgreSQL text cannot hold NUL, so every filter that passes a query value to the
database (the admin's list filters, `?state__exact=a%00b`, as much as our own lists)
would fail with a 500. The API's `text_param` names the parameter for the API's own
filters; this is the net under everything else, the pages and Django's admin included.
"""

from __future__ import annotations

from django.core.exceptions import BadRequest
from django.http import JsonResponse

from controlplane.api.errors import error_body
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
