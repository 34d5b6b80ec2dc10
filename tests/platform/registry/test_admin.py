"""The registry in the admin: read-only, and promotion decisions through the services."""

from __future__ import annotations

import pytest

from controlplane.registry.models import ModelAlias, PromotionRequest

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser(make_user):
    def make(name="root"):
        user = make_user(name, staff=True)
        user.is_superuser = True
        user.save()
        return user

    return make


@pytest.fixture
def pending(team, ready_version, evaluate):
    from controlplane.registry.services import alias_set

    version = ready_version("gpt")
    evaluate(version, {"val_loss": 1.0})
    return alias_set(model=version.model, actor=team.engineer, alias="production", version=version)


def decide(client, request_id, action, reason="looks good"):
    return client.post(
        "/admin/registry/promotionrequest/",
        {"action": action, "_selected_action": [request_id], "confirm": "yes", "reason": reason},
        follow=True,
    )


def test_registry_objects_are_read_only_in_the_admin(client, superuser, pending):
    client.force_login(superuser())
    version = pending.version
    assert client.get("/admin/registry/modelversion/").status_code == 200
    assert client.get(f"/admin/registry/modelversion/{version.pk}/change/").status_code == 200
    assert client.get("/admin/registry/modelversion/add/").status_code == 403
    assert client.post(f"/admin/registry/modelversion/{version.pk}/delete/").status_code == 403
    assert client.get("/admin/registry/promotionrequest/add/").status_code == 403
    listing = client.get("/admin/registry/promotionrequest/?pending=yes")
    assert listing.status_code == 200 and b"production" in listing.content


def test_the_action_asks_for_a_reason_first(client, superuser, team, pending):
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add

    root = superuser()
    member_add(project=team.project, user=root, role=Role.COMPLIANCE, actor=team.owner)
    client.force_login(root)

    page = client.post(
        "/admin/registry/promotionrequest/",
        {"action": "approve", "_selected_action": [pending.pk]},
    )

    assert page.status_code == 200 and b"Reason" in page.content
    pending.refresh_from_db()
    assert pending.state == "pending"


def test_a_compliance_member_approves_in_the_admin(client, superuser, team, pending):
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add

    root = superuser()
    member_add(project=team.project, user=root, role=Role.COMPLIANCE, actor=team.owner)
    client.force_login(root)

    response = decide(client, pending.pk, "approve")

    assert b"1 request(s) approved" in response.content
    pending.refresh_from_db()
    assert pending.state == "approved" and pending.decided_by == root
    assert ModelAlias.objects.get(name="production").version == pending.version


def test_a_superuser_without_a_role_cannot_decide(client, superuser, pending):
    client.force_login(superuser())

    response = decide(client, pending.pk, "reject")

    assert b"membership role" in response.content
    assert PromotionRequest.objects.get().state == "pending"


def test_the_requester_cannot_decide_in_the_admin_either(client, team, pending):
    from controlplane.projects.models import Membership

    team.engineer.is_staff = team.engineer.is_superuser = True
    team.engineer.save()
    Membership.objects.filter(project=team.project, user=team.engineer).update(role="owner")
    client.force_login(team.engineer)

    response = decide(client, pending.pk, "approve")

    assert b"you requested this promotion" in response.content
    assert PromotionRequest.objects.get().state == "pending"
