"""Tokens made before scopes existed migrate to api:read + api:write and a bounded expiry."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


def test_existing_tokens_get_the_default_scopes_and_a_bounded_expiry(make_user, settings):
    settings.API_TOKEN_MAX_DAYS = 365
    user = make_user()
    old_apps = _migrate(("accounts", "0001_initial"))
    try:
        OldToken = old_apps.get_model("accounts", "ApiToken")
        soon = timezone.now() + timedelta(days=10)
        forever = OldToken.objects.create(
            user_id=user.pk, name="f", token_hash="a" * 64, prefix="cp_a"
        )
        year_9999 = OldToken.objects.create(
            user_id=user.pk,
            name="y",
            token_hash="b" * 64,
            prefix="cp_b",
            expires_at=timezone.now().replace(year=9999),
        )
        short = OldToken.objects.create(
            user_id=user.pk, name="s", token_hash="c" * 64, prefix="cp_c", expires_at=soon
        )
    finally:
        new_apps = _migrate(("accounts", "0002_token_scopes"))
    Token = new_apps.get_model("accounts", "ApiToken")
    limit = timezone.now() + timedelta(days=365)
    for old in (forever, year_9999, short):
        token = Token.objects.get(pk=old.pk)
        assert token.scopes == ["api:read", "api:write"]
        assert token.parent_id is None
        assert token.expires_at <= limit
    assert Token.objects.get(pk=short.pk).expires_at == soon
    assert Token.objects.get(pk=forever.pk).expires_at > limit - timedelta(minutes=5)
