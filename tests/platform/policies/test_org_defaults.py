"""Organisation defaults: platform default -> organisation default -> project. An org's
admins edit its default (API and page); its projects without a policy of their own follow
it, and decisions record it ("org v1")."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def org_admin(team):
    """The team project's organisation, with its owner made an admin of it."""
    from controlplane.orgs.selectors import org_membership_of
    from controlplane.orgs.services import org_member_change_role

    org = team.project.organisation
    membership = org_membership_of(org, team.owner.pk)
    org_member_change_role(membership=membership, role="admin", actor=team.admin)
    return org


def _edit_org(org, actor, changes, base=None):
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    return policy_update(
        project=None,
        organisation=org,
        actor=actor,
        changes=changes,
        reason="org rules",
        base_version=current_number(org) if base is None else base,
    )


def _edit_platform(actor, changes):
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    return policy_update(
        project=None,
        actor=actor,
        changes=changes,
        reason="platform",
        base_version=current_number(None),
    )


def test_a_project_follows_its_org_default_over_the_platform_default(team, org_admin):
    from controlplane.policies.selectors import policy_in_force

    _edit_platform(team.admin, {"licences": {"enabled": True, "allowed_licences": ["MIT"]}})
    assert policy_in_force(team.project).label == "platform v1"
    _edit_org(org_admin, team.owner, {"licences": {"allowed_licences": ["Apache-2.0"]}})

    in_force = policy_in_force(team.project)
    assert in_force.label == "org v1"
    # The org's first edit started from the platform default it followed.
    licences = in_force.rules["licences"]
    assert (licences["enabled"], licences["allowed_licences"]) == (True, ["Apache-2.0"])
    assert policy_in_force(team.other_project).label == "org v1"  # same (default) org
    assert policy_in_force(None).label == "platform v1"  # the platform default untouched


def test_a_project_first_edit_starts_from_its_org_default(team, org_admin, set_policy):
    from controlplane.policies.selectors import policy_in_force

    _edit_org(org_admin, team.owner, {"compute": {"enabled": True, "max_gpus_per_job": 2}})
    set_policy(licences={"enabled": True, "allowed_licences": ["MIT"]})

    in_force = policy_in_force(team.project)
    assert in_force.label == "project v1"
    assert in_force.rules["compute"]["max_gpus_per_job"] == 2  # kept from the org's
    assert in_force.rules["licences"]["enabled"]


def test_a_gate_decision_records_the_org_version(
    team, org_admin, make_dataset, uploaded, derived, pretrain, decisions
):
    _edit_org(org_admin, team.owner, {"compute": {"enabled": True, "allowed_queues": ["cpu"]}})

    job = pretrain(derived(uploaded(make_dataset())))

    (event,) = decisions("policy.allowed", job)
    assert event.payload["policy"] == "org v1"


def test_only_org_admins_edit_the_org_default(team, org_admin, api):
    url = f"/api/v1/orgs/{org_admin.slug}/policy/"
    body = {"base_version": 0, "reason": "no", "rules": {"licences": {"enabled": True}}}
    assert api(team.engineer).get(url).json()["scope"] == "platform"
    assert api(team.engineer).put(url, body, format="json").status_code == 403

    response = api(team.owner).put(url, {**body, "reason": "yes"}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["scope"], response.json()["label"]) == ("org", "org v1")
    stale = api(team.owner).put(url, body, format="json")
    assert stale.status_code == 409
    versions = api(team.viewer).get(url + "versions/").json()["results"]
    assert [v["number"] for v in versions] == [1]
    project = api(team.viewer).get(f"/api/v1/projects/{team.project.pk}/policy/").json()
    assert (project["scope"], project["version"], project["label"]) == ("org", 0, "org v1")


def test_bad_rules_name_the_field(team, org_admin, api):
    url = f"/api/v1/orgs/{org_admin.slug}/policy/"
    body = {"base_version": 0, "reason": "x", "rules": {"compute": {"max_gpus_per_job": -1}}}
    response = api(team.owner).put(url, body, format="json")
    assert response.status_code == 400
    assert any("compute" in field for field in response.json()["error"]["fields"])


def test_the_org_policy_page(team, org_admin, client):
    client.force_login(team.owner)
    url = f"/orgs/{org_admin.slug}/policy/"
    page = client.get(url)
    assert page.status_code == 200 and b"follows the platform default" in page.content
    saved = client.post(
        url,
        {
            "rule": "licences",
            "licences-enabled": "on",
            "licences-allowed_licences": "MIT",
            "licences-reason": "open only",
            "licences-base_version": "0",
        },
    )
    assert saved.status_code == 302, saved.content[:2000]
    assert b"org v1" in client.get(url).content
    client.force_login(team.engineer)
    assert b"admins edit its default" in client.get(url).content
    assert client.post(url, {"rule": "licences"}).status_code == 403
