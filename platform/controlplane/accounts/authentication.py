"""`Authorization: Bearer cp_...` authentication for the REST API."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from controlplane.accounts.models import ApiToken, hash_token

# Writing last_used_at on every request would turn reads into writes; a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'")
        try:
            raw = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("token contains invalid characters") from None
        token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(raw)).first()
        if token is None:
            raise exceptions.AuthenticationFailed("invalid token")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("token has been revoked")
        now = timezone.now()
        if token.expires_at is not None and token.expires_at <= now:
            raise exceptions.AuthenticationFailed("token has expired")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("user is inactive")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword
