"""A token's lifetime is bounded (API_TOKEN_MAX_DAYS) and so is a user's count of active
tokens (API_TOKEN_MAX_PER_USER)."""

from datetime import timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


def test_expiry_beyond_the_maximum_is_a_400_naming_the_field(make_user, client, settings):
    """The reported fault: a token with expires_at in year 9999 was accepted."""
    from controlplane.accounts.models import ApiToken

    settings.API_TOKEN_MAX_DAYS = 30
    client.force_login(make_user())
    for expiry in ["9999-12-31T00:00:00Z", (timezone.now() + timedelta(days=31)).isoformat()]:
        response = client.post(
            "/api/v1/tokens/", {"name": "x", "expires_at": expiry}, content_type="application/json"
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert "expires_at" in error["fields"] and "30 days" in error["fields"]["expires_at"][0]
    assert not ApiToken.objects.exists()


def test_token_without_expiry_gets_the_maximum_lifetime(make_user, client, settings):
    from controlplane.accounts.models import ApiToken

    settings.API_TOKEN_MAX_DAYS = 30
    client.force_login(make_user())
    created = client.post("/api/v1/tokens/", {"name": "x"}, content_type="application/json").json()
    lifetime = ApiToken.objects.get(pk=created["id"]).expires_at - timezone.now()
    assert timedelta(days=29, hours=23) < lifetime <= timedelta(days=30)


def test_expiry_within_the_maximum_is_kept(make_user, client, settings):
    settings.API_TOKEN_MAX_DAYS = 30
    client.force_login(make_user())
    expiry = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    created = client.post(
        "/api/v1/tokens/",
        {"name": "x", "expires_at": expiry.isoformat()},
        content_type="application/json",
    ).json()
    assert created["expires_at"].startswith(expiry.strftime("%Y-%m-%dT%H:%M:%S"))


def test_past_expiry_is_a_400(make_user, client):
    client.force_login(make_user())
    response = client.post(
        "/api/v1/tokens/",
        {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},
        content_type="application/json",
    )
    assert response.status_code == 400 and "expires_at" in response.json()["error"]["fields"]


def test_per_user_cap_refuses_the_next_token_with_409(make_user, settings):
    """The reported fault: a token minted 50 tokens of 50 attempts."""
    from rest_framework.test import APIClient

    from controlplane.accounts.models import ApiToken
    from controlplane.accounts.services import api_token_create

    settings.API_TOKEN_MAX_PER_USER = 3
    user = make_user()
    _minter, raw = api_token_create(user=user, name="m", scopes=["api:read", "tokens:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    answers = [
        client.post("/api/v1/tokens/", {"name": f"t{i}", "scopes": ["api:read"]}, format="json")
        for i in range(5)
    ]
    assert [a.status_code for a in answers] == [201, 201, 409, 409, 409]
    error = answers[-1].json()["error"]
    assert error["code"] == "conflict" and "API_TOKEN_MAX_PER_USER=3" in error["message"]
    assert ApiToken.objects.filter(user=user).count() == 3


def test_revoked_and_expired_tokens_do_not_count_against_the_cap(make_user, client, settings):
    from controlplane.accounts.models import ApiToken
    from controlplane.accounts.services import api_token_create, api_token_revoke

    settings.API_TOKEN_MAX_PER_USER = 2
    user = make_user()
    first, _ = api_token_create(user=user, name="a")
    second, _ = api_token_create(user=user, name="b")
    api_token_revoke(token=first, actor=user)
    ApiToken.objects.filter(pk=second.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    client.force_login(user)
    assert (
        client.post("/api/v1/tokens/", {"name": "c"}, content_type="application/json").status_code
        == 201
    )
    assert (
        client.post("/api/v1/tokens/", {"name": "d"}, content_type="application/json").status_code
        == 201
    )
    assert (
        client.post("/api/v1/tokens/", {"name": "e"}, content_type="application/json").status_code
        == 409
    )


def test_tokens_page_shows_the_cap_and_the_lifetime_errors(make_user, client, settings):
    from controlplane.accounts.services import api_token_create

    settings.API_TOKEN_MAX_DAYS = 30
    settings.API_TOKEN_MAX_PER_USER = 1
    user = make_user()
    client.force_login(user)
    too_long = client.post("/account/tokens/", {"name": "x", "expires_in_days": "31"})
    assert too_long.status_code == 400 and "30" in too_long.content.decode()
    api_token_create(user=user, name="only")
    full = client.post("/account/tokens/", {"name": "y"})
    assert full.status_code == 400 and "revoke one first" in full.content.decode()
