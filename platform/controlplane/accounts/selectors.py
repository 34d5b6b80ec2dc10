"""Reads of the accounts app."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from controlplane.accounts.models import ApiToken


def tokens_of(user: User) -> QuerySet[ApiToken]:
    """The user's API tokens, newest first, with the token that minted each."""
    return ApiToken.objects.filter(user=user).select_related("parent").order_by("-created_at")


def token_of(user: User, token_id: int) -> ApiToken | None:
    """One of the user's tokens, or None: another user's token is not found, not forbidden."""
    return ApiToken.objects.filter(pk=token_id, user=user).first()
