"""Revoking a token revokes every token it minted; a token never revokes its ancestors."""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

MINTER = ["api:read", "api:write", "tokens:write"]


def _bearer(raw):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _mint(raw, name, scopes=MINTER):
    from controlplane.accounts.models import ApiToken

    response = _bearer(raw).post("/api/v1/tokens/", {"name": name, "scopes": scopes}, format="json")
    assert response.status_code == 201, response.json()
    return ApiToken.objects.get(pk=response.json()["id"]), response.json()["token"]


@pytest.fixture
def family(make_user):
    """root (session-made) -> child -> grandchild, and a sibling of child."""
    from controlplane.accounts.services import api_token_create

    class Family:
        pass

    f = Family()
    f.user = make_user()
    f.root, f.root_raw = api_token_create(user=f.user, name="root", scopes=MINTER)
    f.child, f.child_raw = _mint(f.root_raw, "child")
    f.grandchild, f.grandchild_raw = _mint(f.child_raw, "grandchild")
    f.sibling, f.sibling_raw = _mint(f.root_raw, "sibling")
    return f


def test_minted_token_cannot_revoke_its_parent(family):
    """The reported fault: a minted token revoked its parent, so a leak was not contained."""
    for raw, ancestor in [
        (family.child_raw, family.root),
        (family.grandchild_raw, family.child),
        (family.grandchild_raw, family.root),
    ]:
        response = _bearer(raw).delete(f"/api/v1/tokens/{ancestor.pk}/")
        assert response.status_code == 403
        assert "minted it" in response.json()["error"]["message"]
        ancestor.refresh_from_db()
        assert ancestor.revoked_at is None


def test_revoking_a_token_revokes_its_whole_subtree(family, client):
    client.force_login(family.user)
    assert client.delete(f"/api/v1/tokens/{family.child.pk}/").status_code == 204
    for token, revoked in [
        (family.root, False),
        (family.child, True),
        (family.grandchild, True),
        (family.sibling, False),
    ]:
        token.refresh_from_db()
        assert (token.revoked_at is not None) == revoked, token.name
    assert _bearer(family.grandchild_raw).get("/api/v1/projects/").status_code == 401
    assert _bearer(family.sibling_raw).get("/api/v1/projects/").status_code == 200


def test_revoking_the_root_from_the_tokens_page_revokes_every_descendant(family, client):
    from controlplane.accounts.models import ApiToken
    from controlplane.audit.models import AuditEvent

    client.force_login(family.user)
    response = client.post(f"/account/tokens/{family.root.pk}/revoke/", follow=True)
    assert "and 3 token(s) it minted" in response.content.decode()
    assert not ApiToken.objects.active().filter(user=family.user).exists()
    revoked = AuditEvent.objects.filter(project_id=None, action="token.revoked")
    assert sorted(int(e.artifact_id) for e in revoked) == sorted(
        t.pk for t in [family.root, family.child, family.grandchild, family.sibling]
    )
    cascaded = [e for e in revoked if e.payload["because_parent_revoked"] == family.root.pk]
    assert len(cascaded) == 3


def test_token_with_tokens_write_revokes_the_tokens_it_minted(family):
    assert (
        _bearer(family.root_raw).delete(f"/api/v1/tokens/{family.grandchild.pk}/").status_code
        == 204
    )
    family.grandchild.refresh_from_db()
    assert family.grandchild.revoked_at is not None


def test_token_cannot_revoke_a_token_beside_it(family):
    response = _bearer(family.child_raw).delete(f"/api/v1/tokens/{family.sibling.pk}/")
    assert response.status_code == 403
    family.sibling.refresh_from_db()
    assert family.sibling.revoked_at is None


def test_token_without_tokens_write_revokes_only_itself(make_user):
    from controlplane.accounts.services import api_token_create

    user = make_user()
    other, _ = api_token_create(user=user, name="other")
    _mine, raw = api_token_create(user=user, name="mine")
    response = _bearer(raw).delete(f"/api/v1/tokens/{other.pk}/")
    assert response.status_code == 403 and "tokens:write" in response.json()["error"]["message"]


def test_revoked_parent_cannot_mint(family):
    from controlplane.accounts.services import TokenForbidden, api_token_create, api_token_revoke

    api_token_revoke(token=family.child, actor=family.user)
    with pytest.raises(TokenForbidden):
        api_token_create(user=family.user, name="late", minted_by=family.child)


def test_revoking_twice_is_a_409(family, client):
    client.force_login(family.user)
    assert client.delete(f"/api/v1/tokens/{family.sibling.pk}/").status_code == 204
    response = client.delete(f"/api/v1/tokens/{family.sibling.pk}/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
