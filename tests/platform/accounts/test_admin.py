"""The admin can revoke tokens (cascading, audited) and lift lockouts (audited), but
cannot forge, edit or delete tokens behind the services' back."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(make_user, client):
    admin = make_user("root", staff=True)
    admin.is_superuser = True
    admin.save()
    client.force_login(admin)
    return client


def test_tokens_cannot_be_added_or_edited_in_the_admin(superuser_client, make_user):
    from controlplane.accounts.services import api_token_create

    token, _ = api_token_create(user=make_user(), name="t")
    assert superuser_client.get("/admin/accounts/apitoken/add/").status_code == 403
    response = superuser_client.post(
        f"/admin/accounts/apitoken/{token.pk}/change/",
        {"name": "t", "expires_at_0": "9999-12-31", "expires_at_1": "00:00:00"},
    )
    assert response.status_code == 403
    token.refresh_from_db()
    assert token.expires_at.year < 9999
    assert superuser_client.post(f"/admin/accounts/apitoken/{token.pk}/delete/").status_code == 403


def test_admin_revokes_a_token_and_its_subtree(superuser_client, make_user):
    from controlplane.accounts.models import ApiToken
    from controlplane.accounts.services import api_token_create
    from controlplane.audit.models import AuditEvent

    user = make_user()
    root, _ = api_token_create(user=user, name="root", scopes=["api:read", "tokens:write"])
    api_token_create(user=user, name="child", scopes=["api:read"], minted_by=root)
    response = superuser_client.post(
        "/admin/accounts/apitoken/",
        {"action": "revoke_tokens", "_selected_action": [root.pk]},
        follow=True,
    )
    assert "Revoked 2 token(s)." in response.content.decode()
    assert not ApiToken.objects.active().exists()
    assert AuditEvent.objects.filter(action="token.revoked").count() == 2


def test_lifting_a_lockout_is_audited(superuser_client, client, make_user, lockout_settings):
    from controlplane.accounts.models import AuthFailureCounter
    from controlplane.audit.models import AuditEvent

    make_user("alice")
    for _ in range(5):
        client.post("/login/", {"username": "alice", "password": "x"}, REMOTE_ADDR="10.0.0.1")
    counter = AuthFailureCounter.objects.get(kind="account")
    superuser_client.post(
        f"/admin/accounts/authfailurecounter/{counter.pk}/delete/", {"post": "yes"}
    )
    assert not AuthFailureCounter.objects.filter(pk=counter.pk).exists()
    assert AuditEvent.objects.filter(action="auth.lockout_lifted").count() == 1
