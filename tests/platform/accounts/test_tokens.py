from datetime import timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


def _bearer(raw):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


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


def test_session_token_gets_the_default_scopes_and_no_parent(make_user, client):
    user = make_user()
    client.force_login(user)
    created = client.post("/api/v1/tokens/", {"name": "ci"}, content_type="application/json").json()
    assert created["scopes"] == ["api:read", "api:write"] and created["parent"] is None


def test_token_authenticates_and_records_last_use(make_user, api):
    from controlplane.accounts.models import ApiToken

    user = make_user()
    client = api(user)
    assert client.get("/api/v1/projects/").status_code == 200
    assert ApiToken.objects.get(user=user).last_used_at is not None


def test_default_token_cannot_create_tokens(make_user, api):
    """The reported fault: any bearer token minted tokens without limit."""
    from controlplane.accounts.models import ApiToken

    user = make_user()
    response = api(user).post("/api/v1/tokens/", {"name": "more"}, format="json")
    assert response.status_code == 403
    assert "tokens:write" in response.json()["error"]["message"]
    assert ApiToken.objects.filter(user=user).count() == 1


def test_tokens_write_token_mints_a_child_that_records_its_parent(make_user):
    from controlplane.accounts.models import ApiToken
    from controlplane.accounts.services import api_token_create

    user = make_user()
    parent, raw = api_token_create(
        user=user, name="automation", scopes=["api:read", "api:write", "tokens:write"]
    )
    response = _bearer(raw).post(
        "/api/v1/tokens/", {"name": "child", "scopes": ["api:read"]}, format="json"
    )
    assert response.status_code == 201, response.json()
    child = ApiToken.objects.get(pk=response.json()["id"])
    assert child.parent == parent and child.scopes == ["api:read"]
    assert response.json()["parent"] == parent.pk


def test_minted_token_cannot_hold_a_scope_its_parent_lacks(make_user):
    from controlplane.accounts.services import api_token_create

    user = make_user()
    _parent, raw = api_token_create(user=user, name="p", scopes=["api:read", "tokens:write"])
    response = _bearer(raw).post(
        "/api/v1/tokens/", {"name": "c", "scopes": ["api:write"]}, format="json"
    )
    assert response.status_code == 400
    assert "api:write" in response.json()["error"]["fields"]["scopes"][0]


def test_minted_token_cannot_outlive_its_parent(make_user):
    from controlplane.accounts.models import ApiToken
    from controlplane.accounts.services import api_token_create

    user = make_user()
    soon = timezone.now() + timedelta(days=2)
    parent, raw = api_token_create(
        user=user, name="p", scopes=["api:read", "tokens:write"], expires_at=soon
    )
    later = (soon + timedelta(days=1)).isoformat()
    response = _bearer(raw).post(
        "/api/v1/tokens/", {"name": "c", "expires_at": later}, format="json"
    )
    assert response.status_code == 400 and "expires_at" in response.json()["error"]["fields"]
    unspecified = _bearer(raw).post("/api/v1/tokens/", {"name": "c"}, format="json").json()
    assert ApiToken.objects.get(pk=unspecified["id"]).expires_at == parent.expires_at


def test_unknown_scope_is_a_400_naming_the_field(make_user, client):
    client.force_login(make_user())
    response = client.post(
        "/api/v1/tokens/", {"name": "x", "scopes": ["admin"]}, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["scopes"] == [
        "unknown scope 'admin'; choose from api:read, api:write, tokens:write, inference"
    ]


def test_read_only_token_reads_but_cannot_write(make_user):
    from controlplane.accounts.services import api_token_create

    _token, raw = api_token_create(user=make_user(), name="ro", scopes=["api:read"])
    client = _bearer(raw)
    assert client.get("/api/v1/projects/").status_code == 200
    response = client.post("/api/v1/projects/", {"name": "X", "slug": "x"}, format="json")
    assert response.status_code == 403 and "api:write" in response.json()["error"]["message"]


def test_revoked_token_is_refused(make_user, api):
    from controlplane.accounts.models import ApiToken

    user = make_user()
    client = api(user)
    token = ApiToken.objects.get(user=user)
    # Any token may revoke itself, whatever its scopes.
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
    assert _bearer("not-a-token").get("/api/v1/projects/").status_code == 401


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


def test_tokens_page_creates_a_token_with_the_chosen_scopes_and_lifetime(make_user, client):
    from controlplane.accounts.models import ApiToken

    user = make_user()
    client.force_login(user)
    client.post(
        "/account/tokens/",
        {"name": "ci", "scopes": ["api:read", "tokens:write"], "expires_in_days": "7"},
    )
    token = ApiToken.objects.get(user=user)
    assert token.scopes == ["api:read", "tokens:write"]
    assert timedelta(days=6) < token.expires_at - timezone.now() <= timedelta(days=7)


def test_token_create_and_revoke_are_audited_in_the_platform_chain(make_user, client):
    from controlplane.audit.models import AuditEvent

    user = make_user()
    client.force_login(user)
    created = client.post("/api/v1/tokens/", {"name": "ci"}, content_type="application/json").json()
    client.delete(f"/api/v1/tokens/{created['id']}/")
    events = AuditEvent.objects.filter(
        project_id=None, artifact_type="apitoken", artifact_id=str(created["id"])
    ).order_by("seq")
    assert [e.action for e in events] == ["token.created", "token.revoked"]
    assert events[0].payload["scopes"] == ["api:read", "api:write"]
    assert all(e.actor_id == user.pk for e in events)
