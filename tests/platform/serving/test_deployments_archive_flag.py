"""A deployment's `archive_requests`: set at creation (API and deploy form), changed by a
PATCH, audited, refused unless a real boolean, sent to the nodes in the replica specs, and
stated on the deployment's page."""

from __future__ import annotations

import re

import pytest

from controlplane.audit.models import AuditEvent
from controlplane.serving.models import Deployment
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    FakeNode,
    deploy_fixture,
    served_version_fixture,
)

pytestmark = pytest.mark.django_db


def base(team) -> str:
    return f"/api/v1/projects/{team.project.pk}/deployments/"


def payloads(team, action: str) -> list[dict]:
    events = AuditEvent.objects.filter(project_id=team.project.pk, action=action).order_by("seq")
    return [event.payload for event in events]


def test_a_deployment_archives_requests_unless_told_not_to(team, api, served_version):
    served_version()
    client = api(team.engineer)

    default = client.post(base(team), {"name": "kept", "model": "gpt", "version": 1}, format="json")
    off = client.post(
        base(team),
        {"name": "unkept", "model": "gpt", "version": 1, "archive_requests": False},
        format="json",
    )

    assert (default.status_code, off.status_code) == (201, 201), off.content
    assert default.json()["archive_requests"] is True
    assert off.json()["archive_requests"] is False
    assert client.get(f"{base(team)}unkept/").json()["archive_requests"] is False
    created = {p["name"]: p["archive_requests"] for p in payloads(team, "deployment.created")}
    assert created == {"kept": True, "unkept": False}


def test_a_patch_turns_archiving_off_and_on_and_each_change_is_audited(team, api, deploy):
    deploy("chat")
    client = api(team.engineer)

    off = client.patch(f"{base(team)}chat/", {"archive_requests": False}, format="json")
    again = client.patch(f"{base(team)}chat/", {"archive_requests": False}, format="json")
    on = client.patch(f"{base(team)}chat/", {"archive_requests": True}, format="json")

    assert [r.json()["archive_requests"] for r in (off, again, on)] == [False, False, True]
    updates = payloads(team, "deployment.updated")
    # The repeated "off" changed nothing, so it is not in the trail.
    assert [(u["before"], u["after"]) for u in updates] == [
        ({"archive_requests": True}, {"archive_requests": False}),
        ({"archive_requests": False}, {"archive_requests": True}),
    ]


@pytest.mark.parametrize("value", ["false", 0, 1, None, "yes"])
def test_archive_requests_must_be_true_or_false(team, api, served_version, deploy, value):
    deploy("chat")
    client = api(team.engineer)

    created = client.post(
        base(team),
        {"name": "other", "model": "gpt", "version": 1, "archive_requests": value},
        format="json",
    )
    patched = client.patch(f"{base(team)}chat/", {"archive_requests": value}, format="json")

    for response in (created, patched):
        assert response.status_code == 400, response.content
        assert "archive_requests" in response.json()["error"]["fields"]
    assert Deployment.objects.get(name="chat").archive_requests is True
    assert not Deployment.objects.filter(name="other").exists()


def test_the_service_refuses_a_value_that_is_not_a_bool(team, deploy):
    from controlplane.serving.errors import InvalidRequest
    from controlplane.serving.services import deployment_update

    deployment = deploy("chat")
    with pytest.raises(InvalidRequest) as refused:
        deploy("other", archive_requests="false")
    assert "archive_requests" in refused.value.fields
    with pytest.raises(InvalidRequest):
        deployment_update(deployment=deployment, actor=team.engineer, archive_requests=0)


def test_replica_specs_carry_the_flag(team, deploy):
    from controlplane.serving.services import deployment_update

    kept = deploy("kept")
    unkept = deploy("unkept", archive_requests=False)
    node = FakeNode("n1")
    node.sync()

    specs = {spec.deployment: spec.archive for spec in node.sync().replicas}
    assert specs == {"alpha/kept": True, "alpha/unkept": False}

    deployment_update(deployment=kept, actor=team.engineer, archive_requests=False)
    deployment_update(deployment=unkept, actor=team.engineer, archive_requests=True)
    specs = {spec.deployment: spec.archive for spec in node.sync().replicas}
    assert specs == {"alpha/kept": False, "alpha/unkept": True}


def _deploy_form(**fields) -> dict:
    return {
        "source": "gpt:1",
        "replicas": 1,
        "device": "cpu",
        "max_batch": 16,
        "max_queue": 64,
        "rate_limit_per_minute": 600,
        **fields,
    }


def test_the_deploy_form_archives_by_default_and_can_turn_it_off(team, client, served_version):
    served_version()
    client.force_login(team.engineer)
    url = f"/projects/{team.project.pk}/deployments/"

    form = client.get(url).content.decode()
    assert "Archive requests and responses" in form
    assert re.search(r'<input type="checkbox" name="archive_requests"[^>]* checked>', form)

    # A ticked box posts "on"; an unticked one posts nothing.
    assert client.post(url, _deploy_form(name="kept", archive_requests="on")).status_code == 302
    assert client.post(url, _deploy_form(name="unkept")).status_code == 302
    flags = dict(Deployment.objects.values_list("name", "archive_requests"))
    assert flags == {"kept": True, "unkept": False}


def test_the_deployment_page_says_when_archiving_is_off(team, client, deploy):
    deploy("kept")
    deploy("unkept", archive_requests=False)
    client.force_login(team.viewer)
    p = team.project.pk

    kept = client.get(f"/projects/{p}/deployments/kept/").content.decode()
    unkept = client.get(f"/projects/{p}/deployments/unkept/").content.decode()
    requests = client.get(f"/projects/{p}/deployments/unkept/requests/").content.decode()

    assert "not archived" not in kept and "every request and its answer are archived" in kept
    assert "requests and responses of this deployment are not archived" in unkept
    assert "Archiving is off for this deployment: requests are not recorded." in unkept
    assert 'id="archive-off"' in requests
