"""`Authorization: Bearer cp_...` authentication for the REST API.

A failed token counts against the client's address (accounts/lockout.py); once the
address is locked out, failures answer 429 with Retry-After instead of 401. A valid token
is accepted even from a locked address: 256 random bits are not guessed by retrying, and
one broken script behind a shared address must not lock out everyone behind it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import NoReturn

from django.utils import timezone
from rest_framework import authentication, exceptions

from controlplane.accounts.lockout import Kind, auth_failure_record, client_address, lockout_for
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
            self._fail(request, "Authorization header must be 'Bearer <token>'")
        try:
            raw = header[1].decode()
        except UnicodeError:
            self._fail(request, "token contains invalid characters")
        token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(raw)).first()
        if token is None:
            self._fail(request, "invalid token")
        if token.revoked_at is not None:
            self._fail(request, "token has been revoked")
        now = timezone.now()
        if token.expires_at is not None and token.expires_at <= now:
            self._fail(request, "token has expired")
        if not token.user.is_active:
            self._fail(request, "user is inactive")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def _fail(self, request, reason: str) -> NoReturn:
        # A locked address is answered without counting: a flood costs one read a request.
        lockout = lockout_for([(Kind.ADDRESS, client_address(request))])
        if lockout is None:
            lockout = auth_failure_record(request=request, via="bearer")
        if lockout is not None:
            raise exceptions.Throttled(wait=lockout.retry_after_seconds, detail=lockout.message)
        raise exceptions.AuthenticationFailed(reason)

    def authenticate_header(self, request):
        return self.keyword
