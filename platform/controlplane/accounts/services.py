from __future__ import annotations

import secrets
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from controlplane.accounts.models import TOKEN_PREFIX, ApiToken, hash_token
from controlplane.audit.services import audit_append


class TokenError(Exception):
    pass


@transaction.atomic
def api_token_create(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Create a token; returns it with the raw secret, which is never stored or shown again."""
    if expires_at is not None and expires_at <= timezone.now():
        raise TokenError("expires_at must be in the future")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, token_hash=hash_token(raw), prefix=raw[:10], expires_at=expires_at
    )
    audit_append(
        project=None, actor=user, action="token.created", artifact=token, payload={"name": name}
    )
    return token, raw


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor: User) -> ApiToken:
    if token.revoked_at is not None:
        raise TokenError("token is already revoked")
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_append(project=None, actor=actor, action="token.revoked", artifact=token, payload={})
    return token
