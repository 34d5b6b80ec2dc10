"""API tokens: create and revoke, with scopes, a lifetime limit, a per-user cap and the
tree of tokens minted by tokens.

Invariants:
- A token is made either in a logged-in session (`minted_by=None`) or by a token that
  holds `tokens:write`; a minted token never gets a scope its parent lacks nor outlives it.
- Revoking a token revokes its whole subtree. Both create and revoke lock the user's row
  first, so a token being minted under a parent that is being revoked either exists
  before the revocation walks the tree (and is revoked with it) or sees its parent
  revoked and is refused: no orphan survives a revocation.
- A token may revoke itself and the tokens below it, never a token above it or beside it.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from controlplane.accounts.models import (
    DEFAULT_SCOPES,
    TOKEN_PREFIX,
    ApiToken,
    Scope,
    hash_token,
)
from controlplane.audit.services import audit_append


class TokenError(Exception):
    """A token request that cannot be carried out; `status` is the HTTP answer."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class TokenInvalid(TokenError):
    status = 400


class TokenForbidden(TokenError):
    status = 403


class TokenConflict(TokenError):
    status = 409


def _lock_user(user: User) -> None:
    # Serialises token management per user (see the invariants above).
    User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True).first()


def _checked_scopes(scopes: list[str] | None, minted_by: ApiToken | None) -> list[str]:
    if scopes is None:
        # The default, less what the minting token itself lacks (never tokens:write).
        scopes = [s for s in DEFAULT_SCOPES if minted_by is None or minted_by.has_scope(s)]
    wanted = list(dict.fromkeys(scopes))
    unknown = [scope for scope in wanted if scope not in Scope.values]
    if unknown:
        raise TokenInvalid(
            f"unknown scope {unknown[0]!r}; choose from {', '.join(Scope.values)}",
            field="scopes",
        )
    if not wanted:
        raise TokenInvalid("a token needs at least one scope", field="scopes")
    if minted_by is not None:
        beyond = [scope for scope in wanted if not minted_by.has_scope(scope)]
        if beyond:
            raise TokenInvalid(
                f"the token making this one lacks scope {beyond[0]!r}; "
                "a token cannot grant more than it holds",
                field="scopes",
            )
    return [scope for scope in Scope.values if scope in wanted]  # canonical order


def _checked_expiry(expires_at: datetime | None, minted_by: ApiToken | None) -> datetime:
    now = timezone.now()
    max_days = settings.API_TOKEN_MAX_DAYS
    latest = now + timedelta(days=max_days)
    if minted_by is not None and minted_by.expires_at is not None:
        latest = min(latest, minted_by.expires_at)
    if expires_at is None:
        return latest
    if expires_at <= now:
        raise TokenInvalid("expires_at must be in the future", field="expires_at")
    if expires_at > latest:
        if minted_by is not None and latest == minted_by.expires_at:
            reason = f"the token making this one expires at {latest.isoformat()}"
        else:
            reason = f"tokens live at most {max_days} days (API_TOKEN_MAX_DAYS)"
        raise TokenInvalid(
            f"expires_at must be no later than {latest.isoformat()}: {reason}",
            field="expires_at",
        )
    return expires_at


def _check_cap(user: User) -> None:
    cap = settings.API_TOKEN_MAX_PER_USER
    active = ApiToken.objects.active().filter(user=user).count()
    if active >= cap:
        raise TokenConflict(
            f"you already have {active} active tokens, the most allowed "
            f"(API_TOKEN_MAX_PER_USER={cap}); revoke one first"
        )


@transaction.atomic
def api_token_create(
    *,
    user: User,
    name: str,
    expires_at: datetime | None = None,
    scopes: list[str] | None = None,
    minted_by: ApiToken | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns it with the raw secret, which is never stored or shown again.

    `minted_by` is the bearer token of the request when a token makes a token (it needs
    `tokens:write`); None means the user is logged in (a session).
    """
    _lock_user(user)
    if minted_by is not None:
        minted_by = ApiToken.objects.get(pk=minted_by.pk)  # fresh, after the lock
        if minted_by.user_id != user.pk or not minted_by.is_active:
            raise TokenForbidden("the token making this request is no longer active")
        if not minted_by.has_scope(Scope.TOKENS_WRITE):
            raise TokenForbidden(
                "this token cannot create tokens: it lacks the tokens:write scope "
                "(create tokens on the API tokens page or with a logged-in session)"
            )
    granted = _checked_scopes(scopes, minted_by)
    expiry = _checked_expiry(expires_at, minted_by)
    _check_cap(user)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        token_hash=hash_token(raw),
        prefix=raw[:10],
        scopes=granted,
        parent=minted_by,
        expires_at=expiry,
    )
    audit_append(
        project=None,
        actor=user,
        action="token.created",
        artifact=token,
        payload={
            "name": name,
            "scopes": granted,
            "expires_at": expiry,
            "minted_by": minted_by.pk if minted_by is not None else None,
        },
    )
    return token, raw


def _descendants(token: ApiToken) -> list[ApiToken]:
    """Every token below `token`, level by level (the tree is shallow and per user)."""
    found: list[ApiToken] = []
    frontier = [token.pk]
    while frontier:
        level = list(ApiToken.objects.filter(parent_id__in=frontier).order_by("pk"))
        found.extend(level)
        frontier = [child.pk for child in level]
    return found


def _ancestor_ids(token: ApiToken) -> set[int]:
    ids: set[int] = set()
    parent_id = token.parent_id
    while parent_id is not None and parent_id not in ids:
        ids.add(parent_id)
        parent_id = ApiToken.objects.filter(pk=parent_id).values_list("parent_id", flat=True)[0]
    return ids


def _check_revoker(token: ApiToken, revoked_by: ApiToken) -> None:
    if revoked_by.pk == token.pk:
        return  # any token may switch itself off
    if token.pk in _ancestor_ids(revoked_by):
        raise TokenForbidden(
            "a token cannot revoke the token that minted it (or any above that); "
            "revoke it from a logged-in session"
        )
    if not revoked_by.has_scope(Scope.TOKENS_WRITE):
        raise TokenForbidden("this token can revoke only itself: it lacks the tokens:write scope")
    if revoked_by.pk not in _ancestor_ids(token):
        raise TokenForbidden("a token can revoke only itself and the tokens it minted")


@transaction.atomic
def api_token_revoke(
    *, token: ApiToken, actor: User, revoked_by: ApiToken | None = None
) -> list[ApiToken]:
    """Revoke `token` and every token it minted, transitively; returns what was revoked.

    `revoked_by` is the bearer token of the request (None: a logged-in session).
    """
    _lock_user(token.user)
    token.refresh_from_db()
    if revoked_by is not None:
        _check_revoker(token, revoked_by)
    if token.revoked_at is not None:
        raise TokenConflict("token is already revoked")
    now = timezone.now()
    subtree = [token, *(t for t in _descendants(token) if t.revoked_at is None)]
    ApiToken.objects.filter(pk__in=[t.pk for t in subtree]).update(revoked_at=now)
    for revoked in subtree:
        revoked.revoked_at = now
        audit_append(
            project=None,
            actor=actor,
            action="token.revoked",
            artifact=revoked,
            payload={
                "by_token": revoked_by.pk if revoked_by is not None else None,
                "because_parent_revoked": token.pk if revoked is not token else None,
            },
        )
    return subtree
