"""The organisation wall: a member of organisation A gets 404 for every object of
organisation B, through every project-scoped API route and page, whatever else they hold.

The routes are not listed by hand: every URL pattern naming a project is walked, so a
new page or endpoint is covered the day it is added. To test the org wall and not only
the project wall, Alice also holds a stale project membership of B's project (a row the
services never leave behind, written here directly): without the org membership it counts
for nothing. A control asks the same routes as Bob (B's member): most of them answer him,
so a 404 for Alice is the wall, not a missing object.
"""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def _routes(patterns=None, prefix: str = ""):
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern)


def _fill(route: str, values: dict[str, object]) -> str:
    return "/" + _PARAM.sub(lambda m: str(values.get(m.group(2), 1)), route)


@pytest.fixture
def two_orgs(make_user, make_upload):
    from controlplane.datasets.services import DeclaredFile, dataset_create, dataset_version_start
    from controlplane.jobs.services import job_create
    from controlplane.orgs.services import org_create
    from controlplane.projects.models import Membership, Role
    from controlplane.projects.services import project_create

    class World:
        pass

    world = World()
    world.alice, world.bob = make_user("alice"), make_user("bob")
    world.org_a = org_create(name="Org A", slug="org-a", actor=world.alice)
    world.org_b = org_create(name="Org B", slug="org-b", actor=world.bob)
    world.project_a = project_create(
        name="A1", slug="a1", actor=world.alice, organisation=world.org_a
    )
    world.project_b = project_create(
        name="B1", slug="b1", actor=world.bob, organisation=world.org_b
    )
    # The stale row: Alice is "owner" of B1 but not a member of Org B.
    Membership.objects.create(project=world.project_b, user=world.alice, role=Role.OWNER)
    dataset = dataset_create(
        project=world.project_b, actor=world.bob, name="D", slug="d", kind="text"
    )
    dataset_version_start(dataset=dataset, actor=world.bob, files=[DeclaredFile("a", 1, "a" * 64)])
    upload = make_upload(world.project_b, world.bob, b"hello\n")
    job = job_create(
        project=world.project_b, kind="inspect", params={"upload_id": upload.pk}, actor=world.bob
    )
    world.values = {
        "project_id": world.project_b.pk,
        "project_slug": world.project_b.slug,
        "slug": world.org_b.slug,
        "dataset_id": dataset.pk,
        "upload_id": upload.pk,
        "job_id": job.pk,
        "user_id": world.bob.pk,
        "number": 1,
        "name": "m",
        "alias": "production",
    }
    return world


def _project_routes(prefix: str) -> list[str]:
    routes = [
        r
        for r in _routes()
        if r.startswith(prefix) and ("<int:project_id>" in r or "<slug:project_slug>" in r)
    ]
    assert len(routes) > 30  # the walk found the routes (a broken walk must not pass)
    return routes


def _status(client, url: str) -> int:
    """The answer to the first method the route takes: GET, POST, PATCH or DELETE."""
    for method in ("get", "post", "patch", "delete"):
        status = getattr(client, method)(url, {}).status_code
        if status != 405:
            return status
    return 405


def test_every_project_api_route_of_another_org_answers_404(two_orgs, api):
    alice, bob = api(two_orgs.alice), api(two_orgs.bob)
    answered_bob = 0
    for route in _project_routes("api/v1/"):
        url = _fill(route, two_orgs.values)
        assert _status(alice, url) == 404, url
        answered_bob += _status(bob, url) != 404
    assert answered_bob >= 15  # lists, details, policy, audit, subject requests ...


def test_every_project_page_of_another_org_answers_404(two_orgs, client):
    client.force_login(two_orgs.alice)
    for route in _project_routes("projects/"):
        url = _fill(route, two_orgs.values)
        assert _status(client, url) == 404, url
    client.force_login(two_orgs.bob)
    assert client.get(f"/projects/{two_orgs.project_b.pk}/").status_code == 200


def test_every_org_route_of_another_org_answers_404(two_orgs, api, client):
    alice = api(two_orgs.alice)
    client.force_login(two_orgs.alice)
    routes = [r for r in _routes() if "<slug:slug>" in r or "<slug:org_slug>" in r]
    assert len(routes) >= 7
    values = {**two_orgs.values, "org_slug": two_orgs.org_b.slug}
    for route in routes:
        url = _fill(route, values)
        caller = alice if route.startswith("api/") else client
        assert _status(caller, url) == 404, url
    assert alice.patch("/api/v1/orgs/org-b/", {"name": "Mine"}, format="json").status_code == 404
    assert alice.delete(f"/api/v1/orgs/org-b/members/{two_orgs.bob.pk}/").status_code == 404


def test_lists_leave_out_the_other_org(two_orgs, api, client):
    slugs = {p["slug"] for p in api(two_orgs.alice).get("/api/v1/projects/").json()["results"]}
    assert slugs == {"a1"}
    orgs = {o["slug"] for o in api(two_orgs.alice).get("/api/v1/orgs/").json()["results"]}
    assert orgs == {"org-a"}
    client.force_login(two_orgs.alice)
    page = client.get("/projects/").content.decode()
    assert "A1" in page and "B1" not in page
    assert "Org B" not in client.get("/orgs/").content.decode()


def test_joining_the_org_opens_the_project_and_leaving_closes_it(two_orgs, api):
    from controlplane.orgs.selectors import org_membership_of
    from controlplane.orgs.services import org_member_add, org_member_remove

    client = api(two_orgs.alice)
    url = f"/api/v1/projects/{two_orgs.project_b.pk}/"
    org_member_add(org=two_orgs.org_b, user=two_orgs.alice, role="member", actor=two_orgs.bob)
    assert client.get(url).status_code == 200
    membership = org_membership_of(two_orgs.org_b, two_orgs.alice.pk)
    assert org_member_remove(membership=membership, actor=two_orgs.bob) == ["b1"]
    assert client.get(url).status_code == 404
