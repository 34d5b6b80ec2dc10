from datetime import timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


def test_token_is_shown_once_and_stored_hashed(make_user, client):
    from controlplane.accounts.models import ApiToken

    user = make_user()
    client.force_login(user)
    created = client.post("/api/v1/tokens/", {"name": "ci"}, content_type="application/json").json()
    raw = created["token"]
    assert raw.startswith("cp_")
    stored = ApiToken.objects.get(pk=created["id"])
    assert raw not in (stored.token_hash, stored.prefix) and len(stored.token_hash) == 64
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert "token" not in listed[0]


def test_token_authenticates_and_records_last_use(make_user, api):
    from controlplane.accounts.models import ApiToken

    user = make_user()
    client = api(user)
    assert client.get("/api/v1/projects/").status_code == 200
    assert ApiToken.objects.get(user=user).last_used_at is not None


def test_revoked_token_is_refused(make_user, api):
    from controlplane.accounts.models import ApiToken

    user = make_user()
    client = api(user)
    token = ApiToken.objects.get(user=user)
    assert client.delete(f"/api/v1/tokens/{token.pk}/").status_code == 204
    response = client.get("/api/v1/projects/")
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_expired_token_is_refused(make_user, api):
    from controlplane.accounts.models import ApiToken

    user = make_user()
    client = api(user)
    ApiToken.objects.filter(user=user).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/projects/")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_garbage_token_is_refused(api, db):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert client.get("/api/v1/projects/").status_code == 401


def test_user_cannot_revoke_someone_elses_token(make_user, api):
    from controlplane.accounts.models import ApiToken

    alice, bob = make_user(), make_user()
    api(alice)
    token = ApiToken.objects.get(user=alice)
    assert api(bob).delete(f"/api/v1/tokens/{token.pk}/").status_code == 404


def test_tokens_page_shows_new_token_once(make_user, client):
    user = make_user()
    client.force_login(user)
    page = client.post("/account/tokens/", {"name": "laptop"}).content.decode()
    assert "copy it now" in page and "cp_" in page
    assert "copy it now" not in client.get("/account/tokens/").content.decode()
