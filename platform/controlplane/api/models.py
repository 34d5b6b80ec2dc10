"""Stored responses of POSTs sent with an `Idempotency-Key` header (see idempotency.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    """The first response to (user, key, method, path), replayed to every retry of it.

    Neither the client's key nor the response is stored in clear: the key as its sha256,
    the response encrypted with a key derived from SECRET_KEY and the client's key, so a
    copy of this table alone gives away nothing (a token's secret is in its response).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key_digest = models.CharField(max_length=64)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    request_digest = models.CharField(max_length=64)  # sha256 of the canonical request body
    status_code = models.PositiveSmallIntegerField(null=True)  # null until the view returned
    response_token = models.TextField(blank=True)  # Fernet token of the JSON body
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "key_digest", "method", "path"], name="one_response_per_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} by user {self.user_id} -> {self.status_code}"
