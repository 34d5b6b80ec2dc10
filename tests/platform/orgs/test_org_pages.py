"""The organisation pages: create, the current organisation (switcher, /orgs/<slug>/),
members and settings for admins, the new-project form's organisation choice."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def two(make_user):
    """Ada admin of Acme and of Beta Corp (a project in each); Max a member of Acme."""
    from controlplane.orgs.services import org_create, org_member_add
    from controlplane.projects.services import project_create

    class Two:
        pass

    two = Two()
    two.ada, two.max = make_user("ada"), make_user("max")
    two.acme = org_create(name="Acme", slug="acme", actor=two.ada)
    two.beta = org_create(name="Beta Corp", slug="beta-corp", actor=two.ada)
    org_member_add(org=two.acme, user=two.max, role="member", actor=two.ada)
    two.rocket = project_create(name="Rocket", slug="rocket", actor=two.ada, organisation=two.acme)
    two.ledger = project_create(name="Ledger", slug="ledger", actor=two.ada, organisation=two.beta)
    return two


def test_creating_an_organisation_makes_you_its_admin(client, make_user):
    client.force_login(make_user("founder"))
    response = client.post("/orgs/", {"name": "New Co", "slug": "new-co"})
    assert response.status_code == 302 and response["Location"] == "/orgs/new-co/"
    page = client.get("/orgs/new-co/").content.decode()
    assert "Your role: <strong>admin" in page and "Add a member" in page
    assert (
        "already exists"
        in client.post("/orgs/", {"name": "X Co", "slug": "new-co"}).content.decode()
    )


def test_the_project_list_and_home_show_the_current_org(client, two):
    client.force_login(two.ada)
    client.get("/orgs/beta-corp/")  # opening an organisation makes it the current one
    projects = client.get("/projects/").content.decode()
    assert "Ledger" in projects and "Rocket" not in projects
    assert "Ledger" in client.get("/").content.decode()

    switched = client.post("/orgs/-/switch/", {"org": "acme", "next": "/projects/"})
    assert switched["Location"] == "/projects/"
    projects = client.get("/projects/").content.decode()
    assert "Rocket" in projects and "Ledger" not in projects
    home = client.get("/").content.decode()
    assert "Rocket" in home and "Ledger" not in home


def test_the_switcher_appears_for_users_in_several_orgs(client, two):
    client.force_login(two.ada)
    assert 'name="org"' in client.get("/projects/").content.decode()
    client.force_login(two.max)
    page = client.get("/projects/").content.decode()
    assert 'name="org"' not in page and ">Acme</a>" in page


def test_switching_to_an_org_you_are_not_in_is_a_404(client, two, make_user):
    client.force_login(two.max)
    assert client.post("/orgs/-/switch/", {"org": "beta-corp"}).status_code == 404
    redirected = client.post("/orgs/-/switch/", {"org": "acme", "next": "https://evil.example/"})
    assert redirected["Location"] == "/"


def test_project_pages_name_their_org(client, two):
    client.force_login(two.ada)
    page = client.get(f"/projects/{two.rocket.pk}/").content.decode()
    assert '<a href="/orgs/acme/">Acme</a> / Rocket' in page


def test_admin_manages_members_from_the_org_page(client, two, make_user):
    make_user("newbie")
    client.force_login(two.ada)
    client.post("/orgs/acme/members/", {"username": "newbie", "role": "member"})
    assert "newbie" in client.get("/orgs/acme/").content.decode()
    unknown = client.post(
        "/orgs/acme/members/", {"username": "ghost", "role": "member"}, follow=True
    )
    assert "No active user named ghost" in unknown.content.decode()

    demote = client.post(f"/orgs/acme/members/{two.ada.pk}/", {"role": "member"}, follow=True)
    assert "at least one admin" in demote.content.decode()
    removed = client.post(f"/orgs/acme/members/{two.max.pk}/", {"remove": "1"}, follow=True)
    assert "max removed from Acme" in removed.content.decode()


def test_members_neither_manage_members_nor_settings(client, two):
    client.force_login(two.max)
    page = client.get("/orgs/acme/").content.decode()
    assert "Add a member" not in page and "Settings" not in page
    assert (
        client.post("/orgs/acme/members/", {"username": "max", "role": "admin"}).status_code == 403
    )
    assert client.get("/orgs/acme/settings/").status_code == 403
    assert client.get("/orgs/beta-corp/").status_code == 404


def test_settings_decide_who_creates_projects(client, two):
    client.force_login(two.ada)
    client.post(
        "/orgs/acme/settings/", {"name": "Acme Inc", "description": "rockets"}
    )  # the box unticked: only admins create projects
    two.acme.refresh_from_db()
    assert (two.acme.name, two.acme.members_create_projects) == ("Acme Inc", False)

    client.force_login(two.max)
    page = client.get("/projects/").content.decode()
    assert "Only the admins of your organisations create projects" in page
    assert client.post("/projects/", {"name": "Sneaky", "slug": "sneaky"}).status_code == 403


def test_the_new_project_form_offers_only_orgs_you_may_create_in(client, two):
    client.force_login(two.max)
    form = client.get("/projects/").context["form"]
    assert [o.slug for o in form.fields["organisation"].queryset] == ["acme"]
    refused = client.post(
        "/projects/", {"name": "Elsewhere", "slug": "elsewhere", "organisation": "beta-corp"}
    )
    assert "organisation" in refused.context["form"].errors
    made = client.post("/projects/", {"name": "Moon", "slug": "moon", "organisation": "acme"})
    assert made.status_code == 302
    from controlplane.projects.models import Project

    assert Project.objects.get(slug="moon").organisation == two.acme


def test_django_admin_lists_organisations_read_only(client, make_user, two):
    client.force_login(make_user("root", staff=True))
    from django.contrib.auth.models import User

    User.objects.filter(username="root").update(is_superuser=True)
    assert b"Acme" in client.get("/admin/orgs/organisation/").content
    assert client.get("/admin/orgs/orgmembership/").status_code == 200
    assert client.get("/admin/orgs/organisation/add/").status_code == 403


def test_admins_see_every_project_of_the_org_but_open_only_their_own(client, two):
    from controlplane.projects.services import project_create

    project_create(name="Secret lab", slug="secret-lab", actor=two.max, organisation=two.acme)
    client.force_login(two.ada)  # an admin of Acme, not a member of max's project
    page = client.get("/orgs/acme/").content.decode()
    assert "Secret lab" in page and "not a member" in page
    assert "/projects/secret-lab" not in page and "Rocket" in page
    client.force_login(two.max)  # a plain member sees only the projects they are in
    page = client.get("/orgs/acme/").content.decode()
    assert "Secret lab" in page and "Rocket" not in page
