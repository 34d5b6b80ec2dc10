"""One JSON shape for every API error.

    {"error": {"status": 400, "code": "invalid", "message": "...", "fields": {"name": ["..."]}}}

`fields` appears only for validation errors. Service errors that carry a status
(JobError, UploadError, ...) map to it; anything unexpected is still a 500, but logged.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "the request conflicts with the current state"
    default_code = "conflict"


def _flatten(detail) -> str:
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    body: dict = {"status": response.status_code}
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body["code"] = "invalid"
        body["message"] = "the request has invalid fields: " + ", ".join(detail)
        body["fields"] = {
            key: [str(m) for m in (value if isinstance(value, list) else [value])]
            for key, value in detail.items()
        }
    else:
        body["code"] = getattr(exc, "default_code", "error")
        if hasattr(exc, "get_codes") and isinstance(exc.get_codes(), str):
            body["code"] = exc.get_codes()
        body["message"] = _flatten(getattr(exc, "detail", str(exc)))
    return Response({"error": body}, status=response.status_code, headers=_headers(response))


def _headers(response) -> dict:
    return {k: v for k, v in response.items() if k in ("WWW-Authenticate", "Retry-After", "Allow")}
