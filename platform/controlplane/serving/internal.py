"""The endpoints serve nodes call: sync (their report in, what to run out) and authorize
(may this token call this deployment?).

Plain Django views, not under /api/: the API's token authentication and throttles do not
apply. A node authenticates with `Authorization: Bearer <SERVE_NODE_SECRET>` (compared in
constant time); anything else is a 401. Bodies are JSON in and out; a body that is not
the protocol's shape is a 400 naming the field, in the API's error shape.

Authorize answers 200 with the verdict in the body (`AuthorizeAnswer`): the HTTP status
says whether the platform could answer, the body whether the token may call. The checks,
in order (the first that fails answers): the token exists, is neither revoked nor
expired and its user is active (401); it holds the `inference` scope (403); the
deployment exists and the token's user is a member of its project (404 either way, so a
token never learns which deployments other projects have); the user's role may call
deployments, `Action.INFER` (owners, engineers; 403).
"""

from __future__ import annotations

import hmac
import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from controlplane.accounts.models import ApiToken, Scope
from controlplane.api.parsers import JSONTextError, loads_storable
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of
from controlplane.serving.errors import ServingError
from controlplane.serving.scheduler import node_sync
from controlplane.serving.selectors import deployment_by_key, token_by_hash
from workers.serve.protocol import (
    AuthorizeAnswer,
    AuthorizeRequest,
    Caller,
    NodeReport,
    to_dict,
)

# As the API's bearer authentication: writing last_used_at on every call is not needed.
LAST_USED_RESOLUTION = timedelta(minutes=1)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _error(status: int, code: str, message: str, fields: dict | None = None) -> JsonResponse:
    error: dict[str, Any] = {"status": status, "code": code, "message": message}
    if fields:
        error["fields"] = fields
    return JsonResponse({"error": error}, status=status)


def _node_authenticated(request: HttpRequest) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        return False
    return hmac.compare_digest(secret.strip().encode(), settings.SERVE_NODE_SECRET.encode())


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise JSONTextError("the body is not UTF-8") from None
    data = loads_storable(text)
    if not isinstance(data, dict):
        raise JSONTextError("expected a JSON object")
    return data


def node_view(handler):
    """Secret check, body parsing and the error shape around one internal endpoint."""

    @csrf_exempt
    @require_POST
    def view(request: HttpRequest) -> JsonResponse:
        if not _node_authenticated(request):
            return _error(401, "not_authenticated", "a serve node's secret is required")
        try:
            data = _body(request)
        except RequestDataTooBig:
            return _error(413, "too_large", "the body is too large")
        except JSONTextError as error:
            return _error(400, "parse_error", f"malformed JSON: {error}")
        try:
            return JsonResponse(handler(data))
        except ServingError as error:
            return _error(error.status, "invalid", error.message, error.fields)
        except (TypeError, ValueError, AttributeError) as error:
            # A missing field (a dataclass's TypeError) or a value of the wrong shape.
            return _error(400, "invalid", f"the body is not a valid request: {error}")

    view.__name__ = handler.__name__
    view.__doc__ = handler.__doc__
    return view


@node_view
def sync(data: dict[str, Any]) -> dict[str, Any]:
    """POST /internal/serve/sync: a NodeReport in, a SyncAnswer out."""
    if not isinstance(data.get("replicas", []), list) or not all(
        isinstance(item, dict) for item in data.get("replicas", [])
    ):
        raise ValueError("replicas must be a list of objects")
    return to_dict(node_sync(NodeReport.from_dict(data)))


@node_view
def authorize(data: dict[str, Any]) -> dict[str, Any]:
    """POST /internal/serve/authorize: an AuthorizeRequest in, an AuthorizeAnswer out."""
    request = AuthorizeRequest(
        **{key: data[key] for key in ("token_sha256", "deployment") if key in data}
    )
    if not isinstance(request.token_sha256, str) or not SHA256_HEX.fullmatch(request.token_sha256):
        raise ValueError("token_sha256 must be 64 lower-case hex digits")
    if not isinstance(request.deployment, str):
        raise ValueError("deployment must be text: '<project slug>/<deployment name>'")
    return to_dict(authorize_token(request))


def _refused(status: int, code: str, message: str) -> AuthorizeAnswer:
    return AuthorizeAnswer(allowed=False, status=status, code=code, message=message)


def authorize_token(request: AuthorizeRequest) -> AuthorizeAnswer:
    """May the token whose sha256 is `request.token_sha256` call `request.deployment`?"""
    token = token_by_hash(request.token_sha256)
    now = timezone.now()
    if token is None:
        return _refused(401, "invalid_token", "invalid token")
    if token.revoked_at is not None:
        return _refused(401, "invalid_token", "token has been revoked")
    if token.expires_at is not None and token.expires_at <= now:
        return _refused(401, "invalid_token", "token has expired")
    if not token.user.is_active:
        return _refused(401, "invalid_token", "user is inactive")
    if not token.has_scope(Scope.INFERENCE):
        return _refused(
            403, "insufficient_scope", "this token lacks the inference scope deployments need"
        )
    not_found = _refused(404, "deployment_not_found", f"no deployment {request.deployment!r}")
    deployment = deployment_by_key(request.deployment)
    if deployment is None:
        return not_found
    project: Project = deployment.project
    role = role_of(token.user, project)
    if role is None and not token.user.is_staff:
        return not_found
    if not token.user.is_staff and not role_allows(role, Action.INFER):
        return _refused(
            403, "permission_denied", f"your role '{role}' in this project may not call deployments"
        )
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return AuthorizeAnswer(
        allowed=True,
        caller=Caller(token_id=token.pk, user_id=token.user_id, username=token.user.username),
        rate_limit_per_minute=deployment.rate_limit_per_minute,
    )
