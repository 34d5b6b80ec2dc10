"""Scopes of bearer tokens, checked on every API request (a DEFAULT_PERMISSION_CLASS).

A request authenticated by a session has no token (`request.auth is None`) and is limited
only by the user's roles. A token adds a ceiling: `api:read` for safe methods,
`api:write` for the others; views may name a different scope (`required_token_scope`).
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from controlplane.accounts.models import ApiToken, Scope


def bearer_token(request) -> ApiToken | None:
    return request.auth if isinstance(request.auth, ApiToken) else None


def token_scope_needed(request, view) -> str:
    custom = getattr(view, "required_token_scope", None)
    if callable(custom):
        return custom(request)
    return Scope.API_READ if request.method in SAFE_METHODS else Scope.API_WRITE


class TokenScopes(BasePermission):
    message = "this token lacks the scope this request needs"

    def has_permission(self, request, view) -> bool:
        token = bearer_token(request)
        if token is None:
            return True
        needed = token_scope_needed(request, view)
        if needed is None or token.has_scope(needed):
            return True
        self.message = f"this token lacks the {needed} scope this request needs"
        return False
