"""One JSON shape for every API error.

    {"error": {"status": 400, "code": "invalid", "message": "...", "fields": {"name": ["..."]}}}

`fields` appears only for validation errors; nested errors are flattened to dotted paths
(`params.train.lr`, `files.0.sha256`). Service errors that carry a status (JobError,
UploadError, ...) map to it. Infrastructure errors are the server's fault, not the
caller's, and say whether a retry may help: a database that is unreachable is a 503 with
Retry-After, an object store that is unreachable a 503 and one that refuses a 502.
Anything else is a 500 in the same shape, logged with its traceback.

`json_error` builds the same body for the Django-level handlers (unknown paths, bodies
over the size limit), so a client under /api/v1/ never has to parse an HTML page.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from workers.storage import StorageError

logger = logging.getLogger("controlplane.api")

# Seconds a client should wait before retrying after a 503 (a database or store restart).
RETRY_AFTER_SECONDS = 5
NON_FIELD = "non_field_errors"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "the request conflicts with the current state"
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "the request body is too large"
    default_code = "too_large"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "a service the API depends on is unavailable; retry shortly"
    default_code = "unavailable"


class BadGateway(exceptions.APIException):
    status_code = status.HTTP_502_BAD_GATEWAY
    default_detail = "the object store refused the request"
    default_code = "bad_gateway"


def flatten_fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """{"files": [{"size": ["..."]}]} -> {"files.0.size": ["..."]}; messages stay strings.

    A nested serializer's own `non_field_errors` belong to the nested object itself, so
    they are listed under its path (`files.0`), not under a `non_field_errors` segment.
    """
    fields: dict[str, list[str]] = {}
    stack: list[tuple[str, Any]] = [(prefix, detail)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                child = path if key == NON_FIELD and path else _join(path, str(key))
                stack.append((child, item))
        elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
            for index in reversed(range(len(value))):
                stack.append((_join(path, str(index)), value[index]))
        else:
            messages = value if isinstance(value, list) else [value]
            fields.setdefault(path or NON_FIELD, []).extend(str(m) for m in messages)
    return fields


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _flatten_message(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in flatten_fields(detail).items())
    if isinstance(detail, list):
        return " ".join(_flatten_message(item) for item in detail)
    return str(detail)


def error_body(status_code: int, code: str, message: str, fields: dict | None = None) -> dict:
    body: dict[str, Any] = {"status": status_code, "code": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return {"error": body}


def json_error(status_code: int, code: str, message: str, **headers: str) -> JsonResponse:
    """The error shape for the places DRF does not reach (URL resolution, middleware)."""
    response = JsonResponse(error_body(status_code, code, message), status=status_code)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _storage_is_unreachable(error: StorageError) -> bool:
    """True when the store could not be reached (a retry may help), False when it refused."""
    import urllib3

    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, (OSError, urllib3.exceptions.HTTPError)):
            return True
        cause = cause.__cause__
    return False


def _is_unique_violation(error: IntegrityError) -> bool:
    cause = error.__cause__
    # PostgreSQL's SQLSTATE 23505 (psycopg), or SQLite's message.
    return getattr(cause, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(error)


def as_api_exception(exc: Exception) -> exceptions.APIException | None:
    """The APIException a non-DRF error answers as, or None for an unexpected one."""
    if isinstance(exc, exceptions.APIException):
        return exc
    if isinstance(exc, Http404):
        return exceptions.NotFound(str(exc) or "not found")
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge(f"the request body is larger than the limit: {exc}")
    if isinstance(exc, SuspiciousOperation):
        return exceptions.ParseError(str(exc))
    if isinstance(exc, IntegrityError) and _is_unique_violation(exc):
        # Two requests raced past a service's "already exists?" check; the database's
        # unique constraint decided. The loser's request conflicts, it is not a bug.
        logger.info("unique constraint decided a race: %s", exc)
        return Conflict("another request created the same thing at the same time; reload and retry")
    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.warning("database unavailable during an API request: %s", exc)
        return ServiceUnavailable("the database is unavailable; retry shortly")
    if isinstance(exc, StorageError):
        if _storage_is_unreachable(exc):
            logger.warning("object store unreachable during an API request: %s", exc)
            return ServiceUnavailable("the object store is unreachable; retry shortly")
        logger.error("object store refused an API request: %s", exc)
        return BadGateway(f"the object store refused the request: {exc}")
    return None


def policy_error_response(exc) -> Response:
    """A policy service's error; a gate's refusal adds the rules that said no:
    {"error": {..., "code": "policy_denied", "policy": "project v3", "denials": [{rule,
    rule_number, title, explanation, reason, fix, subject, rule_url}]}}."""
    from controlplane.policies.errors import PolicyDenied

    body = error_body(exc.status, exc.code, exc.message, exc.fields or None)
    if isinstance(exc, PolicyDenied):
        decision = exc.body()
        body["error"].update(policy=decision["policy"], gate=decision["gate"])
        body["error"]["denials"] = decision["denials"]
    return Response(body, status=exc.status)


def job_error_response(exc) -> Response:
    """A job service's refusal that carries a code (finops' GpuJobRefused: a spent budget,
    a GPU quota): {"error": {..., "code": "budget_exceeded", "budget": {...}}}."""
    body = error_body(exc.status, exc.code, str(exc))
    body["error"].update(getattr(exc, "details", None) or {})
    return Response(body, status=exc.status)


def exception_handler(exc, context):
    from controlplane.jobs.services import JobError
    from controlplane.policies.errors import PolicyDenied, PolicyError

    if isinstance(exc, JobError) and getattr(exc, "code", None):
        set_rollback()
        return job_error_response(exc)

    if isinstance(exc, PolicyError):
        # A refusal is itself audited (gates.enforce): a view wrapped in a transaction (an
        # Idempotency-Key request) must not roll that event back. A gate raises before its
        # caller writes anything, and any atomic block it raised through undid its own work.
        if not isinstance(exc, PolicyDenied):
            set_rollback()
        return policy_error_response(exc)
    mapped = as_api_exception(exc)
    if mapped is None:
        view = context.get("view")
        logger.error(
            "unexpected error in %s", type(view).__name__ if view else "an API view", exc_info=exc
        )
        set_rollback()
        return Response(
            error_body(500, "server_error", "an unexpected error occurred; it has been logged"),
            status=500,
        )
    response = drf_exception_handler(mapped, context)
    if response is None:  # pragma: no cover - every APIException gets a response
        return None
    if isinstance(mapped, exceptions.ValidationError):
        detail = mapped.detail if isinstance(mapped.detail, dict) else {NON_FIELD: mapped.detail}
        fields = flatten_fields(detail)
        body = error_body(
            response.status_code,
            "invalid",
            "the request has invalid fields: " + ", ".join(fields),
            fields,
        )
    else:
        code = getattr(mapped, "default_code", "error")
        if hasattr(mapped, "get_codes") and isinstance(mapped.get_codes(), str):
            code = mapped.get_codes()
        body = error_body(
            response.status_code, code, _flatten_message(getattr(mapped, "detail", str(mapped)))
        )
    headers = _headers(response)
    if response.status_code == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return Response(body, status=response.status_code, headers=headers)


def _headers(response) -> dict:
    return {k: v for k, v in response.items() if k in ("WWW-Authenticate", "Retry-After", "Allow")}
