"""API tokens (shown once, stored as a SHA-256 hash, scoped, revocable as a tree) and the
counters of failed authentication that lock out password and token guessing."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "cp_"


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits, so a fast unsalted hash is enough (no dictionary to attack).
    return hashlib.sha256(raw.encode()).hexdigest()


class Scope(models.TextChoices):
    """What a bearer token may do, on top of (never beyond) its user's project roles."""

    API_READ = "api:read", "read: GET requests to every endpoint the user can see"
    API_WRITE = "api:write", "write: create, change and delete through the API"
    # Separate from api:write so that a leaked everyday token cannot mint more tokens.
    TOKENS_WRITE = "tokens:write", "manage tokens: create tokens and revoke the ones it minted"
    # Given to programs that call a model: a leaked one cannot read or change anything.
    INFERENCE = "inference", "inference: call the project's deployments (nothing else)"


# What a token gets when no scopes are asked for, and what tokens made before scopes
# existed were migrated to: the whole API except token management.
DEFAULT_SCOPES: tuple[str, ...] = (Scope.API_READ.value, Scope.API_WRITE.value)


def default_scopes() -> list[str]:
    return list(DEFAULT_SCOPES)


class ApiTokenQuerySet(models.QuerySet):
    def active(self) -> ApiTokenQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters, so a user can tell tokens apart without the secret.
    prefix = models.CharField(max_length=12)
    scopes = models.JSONField(default=default_scopes)
    # The token that minted this one (null: made in a logged-in session). Revoking a token
    # revokes its whole subtree, so revoking a leaked token also kills what it minted.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class AuthFailureCounter(models.Model):
    """Failed authentications of one account or one client address, for lockout.

    The key is hashed (like audit subjects): the table must not become a list of
    usernames and IP addresses. Rows exist only for keys that failed recently.
    """

    class Kind(models.TextChoices):
        ACCOUNT = "account"
        ADDRESS = "address"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    key_hash = models.CharField(max_length=64)
    # Failures since the window opened; reaching the threshold locks the key.
    failures = models.PositiveIntegerField(default=0)
    window_started_at = models.DateTimeField()
    # Consecutive lockouts: each one lasts twice as long as the one before (backoff).
    lockouts = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "key_hash"], name="auth_failure_key_unique")
        ]
        indexes = [models.Index(fields=["updated_at"], name="auth_failure_updated")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key_hash[:12]}… ({self.failures} failures)"
