"""The organisations API: create and list, settings, members and roles, the projects of an
organisation; the projects API's organisation field, filter and choice on create."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(make_user):
    from controlplane.orgs.services import org_create, org_member_add

    class Acme:
        pass

    acme = Acme()
    acme.admin, acme.member, acme.stranger = make_user("ada"), make_user("max"), make_user("sam")
    acme.org = org_create(name="Acme", slug="acme", actor=acme.admin)
    org_member_add(org=acme.org, user=acme.member, role="member", actor=acme.admin)
    return acme


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    return response.json()["error"]


def test_anyone_creates_an_organisation_and_becomes_its_admin(api, make_user):
    from controlplane.audit.models import AuditEvent

    client = api(make_user("founder"))
    response = client.post("/api/v1/orgs/", {"name": "New Co", "slug": "new-co"}, format="json")
    assert response.status_code == 201
    assert response.json()["my_role"] == "admin"
    listed = client.get("/api/v1/orgs/").json()["results"]
    assert [o["slug"] for o in listed] == ["new-co"]
    assert AuditEvent.objects.filter(action="org.created", project_id=None).exists()


def test_bad_organisation_input_names_the_field(api, acme):
    client = api(acme.admin)
    fields = _error(client.post("/api/v1/orgs/", {"name": "X", "slug": "Bad Slug"}), 400)["fields"]
    assert "slug" in fields
    assert "colour" in _error(client.patch("/api/v1/orgs/acme/", {"colour": "red"}), 400)["fields"]
    taken = client.post("/api/v1/orgs/", {"name": "Again", "slug": "acme"}, format="json")
    assert "already exists" in _error(taken, 409)["message"]


def test_create_is_idempotent_with_a_key(api, make_user):
    from controlplane.orgs.models import Organisation

    client = api(make_user())
    body = {"name": "Once", "slug": "once"}
    first = client.post("/api/v1/orgs/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client.post("/api/v1/orgs/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again["Idempotent-Replayed"] == "true"
    assert Organisation.objects.filter(slug="once").count() == 1


def test_only_admins_change_settings(api, acme):
    assert _error(api(acme.member).patch("/api/v1/orgs/acme/", {"name": "Mine"}), 403)
    response = api(acme.admin).patch(
        "/api/v1/orgs/acme/", {"members_create_projects": False}, format="json"
    )
    assert response.json()["members_create_projects"] is False
    assert api(acme.member).get("/api/v1/orgs/acme/").json()["my_role"] == "member"


def test_admin_manages_members(api, acme):
    client = api(acme.admin)
    added = client.post(
        "/api/v1/orgs/acme/members/", {"username": "sam", "role": "member"}, format="json"
    )
    assert added.status_code == 201
    url = f"/api/v1/orgs/acme/members/{acme.stranger.pk}/"
    assert client.patch(url, {"role": "admin"}, format="json").json()["role"] == "admin"
    assert client.delete(url).status_code == 204
    names = [m["username"] for m in client.get("/api/v1/orgs/acme/members/").json()["results"]]
    assert names == ["ada", "max"]


def test_member_input_errors_are_clear(api, acme):
    client = api(acme.admin)
    unknown = client.post("/api/v1/orgs/acme/members/", {"username": "nobody", "role": "member"})
    assert "username" in _error(unknown, 400)["fields"]
    bad_role = client.post("/api/v1/orgs/acme/members/", {"username": "sam", "role": "boss"})
    assert "role" in _error(bad_role, 400)["fields"]
    twice = client.post("/api/v1/orgs/acme/members/", {"username": "max", "role": "member"})
    assert "already a member" in _error(twice, 409)["message"]
    assert _error(client.delete(f"/api/v1/orgs/acme/members/{acme.stranger.pk}/"), 404)


def test_members_cannot_manage_members(api, acme):
    client = api(acme.member)
    assert _error(
        client.post("/api/v1/orgs/acme/members/", {"username": "sam", "role": "member"}), 403
    )
    assert _error(client.delete(f"/api/v1/orgs/acme/members/{acme.admin.pk}/"), 403)


def test_the_last_admin_can_be_neither_demoted_nor_removed(api, acme):
    client = api(acme.admin)
    url = f"/api/v1/orgs/acme/members/{acme.admin.pk}/"
    assert "at least one admin" in _error(client.patch(url, {"role": "member"}), 409)["message"]
    assert "at least one admin" in _error(client.delete(url), 409)["message"]
    client.patch(f"/api/v1/orgs/acme/members/{acme.member.pk}/", {"role": "admin"})
    assert client.patch(url, {"role": "member"}).status_code == 200


def test_removing_a_member_removes_their_projects_of_the_org(api, acme):
    from controlplane.audit.models import AuditEvent
    from controlplane.projects.services import member_add, project_create

    project = project_create(name="P", slug="p", actor=acme.admin, organisation=acme.org)
    member_add(project=project, user=acme.member, role="engineer", actor=acme.admin)
    assert api(acme.member).get(f"/api/v1/projects/{project.pk}/").status_code == 200
    assert api(acme.admin).delete(f"/api/v1/orgs/acme/members/{acme.member.pk}/").status_code == 204
    assert api(acme.member).get(f"/api/v1/projects/{project.pk}/").status_code == 404
    removed = AuditEvent.objects.get(project_id=project.pk, action="member.removed")
    assert removed.payload["user_id"] == acme.member.pk


def test_the_only_owner_of_a_project_cannot_leave_the_org(api, acme):
    from controlplane.projects.services import project_create

    project_create(name="Mine", slug="mine", actor=acme.member, organisation=acme.org)
    response = api(acme.admin).delete(f"/api/v1/orgs/acme/members/{acme.member.pk}/")
    assert "only owner of mine" in _error(response, 409)["message"]


def test_org_projects_list_and_project_fields(api, acme):
    from controlplane.projects.services import project_create

    project_create(name="P", slug="p", actor=acme.admin, organisation=acme.org)
    rows = api(acme.admin).get("/api/v1/orgs/acme/projects/").json()["results"]
    assert [(r["slug"], r["organisation"]) for r in rows] == [("p", "acme")]
    assert api(acme.member).get("/api/v1/orgs/acme/projects/").json()["results"] == []


def test_project_list_filters_by_org(api, acme):
    from controlplane.orgs.services import org_create
    from controlplane.projects.services import project_create

    other = org_create(name="Other", slug="other", actor=acme.admin)
    project_create(name="P", slug="p", actor=acme.admin, organisation=acme.org)
    project_create(name="Q", slug="q", actor=acme.admin, organisation=other)
    client = api(acme.admin)
    assert {r["slug"] for r in client.get("/api/v1/projects/").json()["results"]} == {"p", "q"}
    assert [r["slug"] for r in client.get("/api/v1/projects/?org=other").json()["results"]] == ["q"]
    assert _error(api(acme.member).get("/api/v1/projects/?org=other"), 404)


def test_create_project_names_its_organisation(api, acme, make_user):
    from controlplane.orgs.services import org_create

    org_create(name="Second", slug="second", actor=acme.admin)
    client = api(acme.admin)
    body = {"name": "Plan", "slug": "plan"}
    choose = _error(client.post("/api/v1/projects/", body, format="json"), 400)
    assert "several organisations" in choose["fields"]["organisation"][0]
    made = client.post("/api/v1/projects/", {**body, "organisation": "second"}, format="json")
    assert made.status_code == 201 and made.json()["organisation"] == "second"
    foreign = api(make_user()).post(
        "/api/v1/projects/", {"name": "Xeno", "slug": "xeno", "organisation": "acme"}, format="json"
    )
    assert _error(foreign, 404)


def test_a_member_of_one_org_creates_there_unless_the_org_forbids(api, acme):
    client = api(acme.member)
    made = client.post("/api/v1/projects/", {"name": "Mine", "slug": "mine"}, format="json")
    assert made.status_code == 201 and made.json()["organisation"] == "acme"
    api(acme.admin).patch("/api/v1/orgs/acme/", {"members_create_projects": False}, format="json")
    refused = client.post("/api/v1/projects/", {"name": "Next", "slug": "next"}, format="json")
    assert "only admins" in _error(refused, 403)["message"]


def test_a_user_in_no_org_still_creates_projects(api, make_user):
    made = api(make_user()).post("/api/v1/projects/", {"name": "Solo", "slug": "solo"})
    assert made.status_code == 201 and made.json()["organisation"] == "default"
