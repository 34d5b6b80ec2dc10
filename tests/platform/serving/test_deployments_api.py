"""The deployments API: what each role may do, the representation, the error shapes."""

from __future__ import annotations

import pytest

from controlplane.serving.models import Deployment
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    FakeNode,
    deploy_fixture,
    pipeline_dataset_fixture,
    served_version_fixture,
)

pytestmark = pytest.mark.django_db


def base(team, project=None) -> str:
    return f"/api/v1/projects/{(project or team.project).pk}/deployments/"


def error(response) -> dict:
    return response.json()["error"]


def test_an_engineer_deploys_and_reads_it_back(team, api, served_version):
    served_version()
    client = api(team.engineer)

    created = client.post(
        base(team), {"name": "chat", "model": "gpt", "version": 1, "replicas": 2}, format="json"
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["name"], body["model"], body["task"], body["follows"]) == (
        "chat",
        "gpt",
        "text-generation",
        "v1",
    )
    assert (body["target_version"], body["served_version"], body["pinned_version"]) == (1, 1, 1)
    assert (body["state"], body["replicas"], body["replica_set"], body["base_url"]) == (
        "running",
        2,
        [],
        None,
    )
    assert body["guardrails"]["source"] == "platform"
    listing = client.get(base(team)).json()
    assert [d["name"] for d in listing["results"]] == ["chat"]


def test_the_detail_shows_replicas_and_a_base_url_on_a_live_node(team, api, deploy):
    deploy(replicas=1)
    node = FakeNode("n1")
    node.sync()
    node.ready()
    node.sync()

    body = api(team.viewer).get(f"{base(team)}chat/").json()

    assert body["base_url"] == "http://n1:8100/p/alpha/chat/v1"
    (replica,) = body["replica_set"]
    assert (replica["state"], replica["node"], replica["version"], replica["restarts"]) == (
        "ready",
        "n1",
        1,
        0,
    )


def test_an_alias_deployment_names_what_it_follows(team, api, served_version):
    from controlplane.registry.services import alias_set

    version = served_version()
    alias_set(model=version.model, actor=team.engineer, alias="candidate", version=version)

    response = api(team.engineer).post(
        base(team), {"name": "chat", "model": "gpt", "alias": "candidate"}, format="json"
    )

    assert response.status_code == 201, response.content
    assert (response.json()["follows"], response.json()["pinned_version"]) == ("@candidate", None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "chat", "model": "gpt", "version": "1"}, "version"),
        ({"name": "chat", "model": "gpt", "version": 1, "replicas": 0}, "replicas"),
        ({"name": "chat", "model": "gpt", "version": 1, "colour": "red"}, "colour"),
        ({"name": "chat", "model": "nope", "version": 1}, "model"),
        ({"name": "chat", "model": "gpt", "alias": "production"}, "alias"),
        ({"name": "chat", "model": "gpt"}, "version"),
        ({"name": "Chat!", "model": "gpt", "version": 1}, "name"),
        (
            {"name": "chat", "model": "gpt", "version": 1, "guardrails": {"pii": "sometimes"}},
            "guardrails.pii",
        ),
    ],
)
def test_bad_fields_are_a_400_naming_them(team, api, served_version, body, field):
    served_version()
    response = api(team.engineer).post(base(team), body, format="json")
    assert response.status_code == 400, response.content
    assert field in error(response)["fields"]


def test_a_name_taken_is_a_409(team, api, deploy):
    deploy("chat")
    response = api(team.engineer).post(
        base(team), {"name": "chat", "model": "gpt", "version": 1}, format="json"
    )
    assert response.status_code == 409


def test_an_idempotent_create_retry_makes_one_deployment(team, api, served_version):
    served_version()
    client = api(team.engineer)
    body = {"name": "chat", "model": "gpt", "version": 1}

    first = client.post(base(team), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    second = client.post(base(team), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] == second.json()["id"]
    assert Deployment.objects.count() == 1


@pytest.mark.parametrize("role", ["viewer", "compliance"])
def test_readers_read_but_cannot_change_a_deployment(team, api, deploy, role):
    deploy("chat")
    client = api(getattr(team, role))

    assert client.get(base(team)).status_code == 200
    assert client.get(f"{base(team)}chat/").status_code == 200
    writes = [
        client.post(base(team), {"name": "x", "model": "gpt", "version": 1}, format="json"),
        client.patch(f"{base(team)}chat/", {"rate_limit_per_minute": 5}, format="json"),
        client.post(f"{base(team)}chat/stop/", {}, format="json"),
        client.post(f"{base(team)}chat/start/", {}, format="json"),
        client.post(f"{base(team)}chat/scale/", {"replicas": 2}, format="json"),
    ]
    assert [w.status_code for w in writes] == [403] * 5


def test_another_project_s_user_gets_404(team, api, deploy):
    deploy("chat")
    client = api(team.outsider)
    assert client.get(base(team)).status_code == 404
    assert client.get(f"{base(team)}chat/").status_code == 404
    assert client.post(f"{base(team)}chat/stop/", {}, format="json").status_code == 404
    # ...and a deployment of this project is not found through their own project.
    assert client.get(f"{base(team, team.other_project)}chat/").status_code == 404


def test_an_unknown_deployment_is_a_404(team, api):
    assert api(team.viewer).get(f"{base(team)}nope/").status_code == 404


def test_stop_scale_start_and_patch(team, api, deploy):
    deploy("chat")
    client = api(team.engineer)

    scaled = client.post(f"{base(team)}chat/scale/", {"replicas": 3}, format="json")
    patched = client.patch(
        f"{base(team)}chat/",
        {"rate_limit_per_minute": 60, "guardrails": {"toxicity": "refuse"}},
        format="json",
    )
    stopped = client.post(f"{base(team)}chat/stop/", {"reason": "budget"}, format="json")

    assert scaled.json()["replicas"] == 3
    assert patched.json()["rate_limit_per_minute"] == 60
    assert patched.json()["guardrails"]["toxicity"] == "refuse"
    assert (stopped.json()["state"], stopped.json()["reason"]) == ("stopped", "budget")
    started = client.post(f"{base(team)}chat/start/", format="json")
    assert started.json()["state"] == "running"
    bad = client.post(f"{base(team)}chat/scale/", {"replicas": 99}, format="json")
    assert bad.status_code == 400 and "replicas" in error(bad)["fields"]
