import pytest

pytestmark = pytest.mark.django_db


def test_owner_adds_changes_and_removes_a_member(team, api):
    client = api(team.owner)
    url = f"/api/v1/projects/{team.project.pk}/members/"
    assert client.post(url, {"username": "outsider", "role": "viewer"}).status_code == 201
    assert (
        client.patch(f"{url}{team.outsider.pk}/", {"role": "engineer"}).json()["role"] == "engineer"
    )
    assert client.delete(f"{url}{team.outsider.pk}/").status_code == 204
    usernames = {m["username"] for m in client.get(url).json()["results"]}
    assert "outsider" not in usernames


def test_adding_an_existing_member_is_a_conflict(team, api):
    response = api(team.owner).post(
        f"/api/v1/projects/{team.project.pk}/members/", {"username": "viewer", "role": "viewer"}
    )
    assert response.status_code == 409
    assert "already a member" in response.json()["error"]["message"]


def test_last_owner_cannot_leave_or_be_demoted(team, api):
    client = api(team.owner)
    url = f"/api/v1/projects/{team.project.pk}/members/{team.owner.pk}/"
    assert client.patch(url, {"role": "viewer"}).status_code == 409
    assert client.delete(url).status_code == 409


def test_unknown_user_and_role_are_field_errors(team, api):
    client = api(team.owner)
    url = f"/api/v1/projects/{team.project.pk}/members/"
    errors = client.post(url, {"username": "nobody", "role": "king"}).json()["error"]["fields"]
    assert set(errors) == {"role"}
    errors = client.post(url, {"username": "nobody", "role": "viewer"}).json()["error"]["fields"]
    assert "no active user" in errors["username"][0]


def test_membership_changes_are_audited(team, api):
    from controlplane.audit.models import AuditEvent

    api(team.owner).patch(
        f"/api/v1/projects/{team.project.pk}/members/{team.viewer.pk}/", {"role": "engineer"}
    )
    event = AuditEvent.objects.filter(
        project_id=team.project.pk, action="member.role_changed"
    ).get()
    assert event.payload == {"user_id": team.viewer.pk, "from": "viewer", "to": "engineer"}
    assert event.actor_id == team.owner.pk
