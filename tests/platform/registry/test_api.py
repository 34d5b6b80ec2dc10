"""The registry's REST API: what each role may do, the error shapes, the promotion flow."""

from __future__ import annotations

import pytest

from controlplane.registry.models import ModelAlias, PromotionRequest, RegisteredModel

pytestmark = pytest.mark.django_db


def base(team) -> str:
    return f"/api/v1/projects/{team.project.pk}"


def error(response) -> dict:
    return response.json()["error"]


@pytest.fixture
def gpt(team, ready_version):
    """Model `gpt` with ready versions 1 and 2 and a val_loss threshold."""
    from controlplane.registry.services import model_update

    v1 = ready_version("gpt")
    v2 = ready_version("gpt")
    model_update(
        model=v1.model,
        actor=team.owner,
        promotion_thresholds=[{"metric": "val_loss", "op": "<=", "value": 2.0}],
    )
    return v1, v2


def test_register_through_the_api_then_read_it_back(team, api, make_model_job, finish_sent):
    job = make_model_job("pretrain", params={"dataset_version_id": None})
    client = api(team.engineer)

    created = client.post(
        f"{base(team)}/models/gpt/versions/",
        {"job_id": job.pk, "create_model": True, "description": "first"},
        format="json",
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["model"], body["number"], body["state"]) == ("gpt", 1, "registering")
    assert body["source_job_id"] == job.pk
    assert {f["name"] for f in body["files"]} == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
    }
    finish_sent()
    version = client.get(f"{base(team)}/models/gpt/versions/1/").json()
    assert version["state"] == "ready" and version["parameter_count"] == 40
    listing = client.get(f"{base(team)}/models/").json()
    assert listing["count"] == 1
    (model,) = listing["results"]
    assert (model["name"], model["task"], model["latest_version"]) == (
        "gpt",
        "text-generation",
        1,
    )
    versions = client.get(f"{base(team)}/models/gpt/versions/?state=ready").json()
    assert [v["number"] for v in versions["results"]] == [1]


def test_register_needs_an_existing_model_unless_asked_to_create_it(team, api, make_model_job):
    job = make_model_job()
    response = api(team.engineer).post(
        f"{base(team)}/models/gpt/versions/", {"job_id": job.pk}, format="json"
    )
    assert response.status_code == 404
    assert "no model named 'gpt'" in error(response)["message"]


def test_an_idempotent_register_retry_creates_one_version(team, api, make_model_job):
    job = make_model_job()
    client = api(team.engineer)
    url = f"{base(team)}/models/gpt/versions/"
    body = {"job_id": job.pk, "create_model": True}

    first = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="reg-1")
    again = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="reg-1")

    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert RegisteredModel.objects.get().versions.count() == 1
    # Without a key, the same job again is a clear conflict, not a second version.
    third = client.post(url, body, format="json")
    assert third.status_code == 409
    assert "already registered as gpt v1" in error(third)["message"]


def test_bad_input_gets_clear_errors(team, api, make_model_job):
    client = api(team.engineer)
    url = f"{base(team)}/models/gpt/versions/"
    failed = make_model_job(state="failed")
    other = make_model_job(project=team.other_project, user=team.outsider)

    response = client.post(url, {"job_id": failed.pk, "create_model": True}, format="json")
    assert response.status_code == 400
    assert f"job {failed.pk} is failed" in error(response)["message"]

    response = client.post(url, {"job_id": other.pk, "create_model": True}, format="json")
    assert response.status_code == 404

    response = client.post(url, {"job_id": "7", "create_model": True}, format="json")
    assert response.status_code == 400 and "job_id" in error(response)["fields"]

    response = client.post(url, {"job_id": failed.pk, "extra": 1}, format="json")
    assert error(response)["fields"]["extra"] == ["unknown field"]

    response = client.post(f"{base(team)}/models/", {"name": "bad name", "task": "x"})
    assert response.status_code == 400


def test_create_a_model_and_a_duplicate(team, api):
    client = api(team.engineer)
    created = client.post(
        f"{base(team)}/models/", {"name": "digits", "task": "image-generation"}, format="json"
    )
    assert created.status_code == 201 and created.json()["version_count"] == 0
    again = client.post(
        f"{base(team)}/models/", {"name": "digits", "task": "image-generation"}, format="json"
    )
    assert again.status_code == 409


def test_promotion_flow_through_the_api(team, api, gpt, evaluate):
    v1, _ = gpt
    engineer, compliance = api(team.engineer), api(team.compliance)
    alias_url = f"{base(team)}/models/gpt/aliases/production/"

    refused = engineer.put(alias_url, {"version": 1}, format="json")
    assert refused.status_code == 409
    assert "no finished evaluation" in error(refused)["message"]

    evaluate(v1, {"val_loss": 2.5})
    refused = engineer.put(alias_url, {"version": 1}, format="json")
    assert refused.status_code == 409
    assert "val_loss 2.5 > 2 (threshold val_loss <= 2)" in error(refused)["message"]

    evaluate(v1, {"val_loss": 1.5}, age_seconds=0)
    opened = engineer.put(alias_url, {"version": 1, "reason": "good"}, format="json")
    assert opened.status_code == 202, opened.content
    request_id = opened.json()["id"]
    assert opened.json()["state"] == "pending"

    pending = engineer.get(f"{base(team)}/promotion-requests/?state=pending").json()
    assert [r["id"] for r in pending["results"]] == [request_id]

    own = engineer.post(
        f"{base(team)}/promotion-requests/{request_id}/approve/", {"reason": "x"}, format="json"
    )
    assert own.status_code == 403  # an engineer never approves; not even their own

    approved = compliance.post(
        f"{base(team)}/promotion-requests/{request_id}/approve/",
        {"reason": "evaluation reviewed"},
        format="json",
    )
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    alias = engineer.get(alias_url).json()
    assert (alias["version"], alias["previous_version"]) == (1, None)

    again = compliance.post(
        f"{base(team)}/promotion-requests/{request_id}/approve/", {"reason": "x"}, format="json"
    )
    assert again.status_code == 409


def test_approving_your_own_request_is_403_saying_why(team, api, gpt, evaluate):
    v1, _ = gpt
    evaluate(v1, {"val_loss": 1.0})
    owner = api(team.owner)
    opened = owner.put(
        f"{base(team)}/models/gpt/aliases/production/", {"version": 1}, format="json"
    )
    response = owner.post(
        f"{base(team)}/promotion-requests/{opened.json()['id']}/approve/",
        {"reason": "me"},
        format="json",
    )
    assert response.status_code == 403
    assert error(response)["message"] == (
        "you requested this promotion; a second owner or compliance officer must approve it"
    )


def test_unprotected_alias_moves_and_rolls_back(team, api, gpt):
    client = api(team.engineer)
    url = f"{base(team)}/models/gpt/aliases/candidate/"
    assert client.put(url, {"version": 1}, format="json").status_code == 200
    moved = client.put(url, {"version": 2}, format="json")
    assert moved.status_code == 200
    assert (moved.json()["version"], moved.json()["previous_version"]) == (2, 1)

    rolled = client.post(url + "rollback/", {}, format="json")
    assert rolled.status_code == 200 and rolled.json()["version"] == 1

    model = client.get(f"{base(team)}/models/gpt/").json()
    assert model["aliases"] == {"candidate": 1}

    assert client.put(url, {"version": 9}, format="json").status_code == 404
    assert client.put(url.replace("candidate", "latest"), {"version": 1}).status_code == 400
    assert client.get(url.replace("candidate", "nope")).status_code == 404
    assert client.delete(url).status_code == 204
    assert not ModelAlias.objects.exists()


def test_deleting_an_aliased_version_is_409(team, api, gpt):
    client = api(team.engineer)
    client.put(f"{base(team)}/models/gpt/aliases/candidate/", {"version": 2}, format="json")

    response = client.delete(f"{base(team)}/models/gpt/versions/2/")
    assert response.status_code == 409
    assert "@candidate" in error(response)["message"]

    deleted = client.delete(f"{base(team)}/models/gpt/versions/1/")
    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"


def test_version_texts_and_thresholds(team, api, gpt):
    engineer, owner = api(team.engineer), api(team.owner)
    patched = engineer.patch(
        f"{base(team)}/models/gpt/versions/1/",
        {"intended_use": "demos", "limitations": "tiny"},
        format="json",
    )
    assert patched.status_code == 200 and patched.json()["intended_use"] == "demos"

    thresholds = [{"metric": "toxicity_share", "op": "<=", "value": 0.01}]
    denied = engineer.patch(
        f"{base(team)}/models/gpt/", {"promotion_thresholds": thresholds}, format="json"
    )
    assert denied.status_code == 403
    done = owner.patch(
        f"{base(team)}/models/gpt/", {"promotion_thresholds": thresholds}, format="json"
    )
    assert done.status_code == 200 and done.json()["promotion_thresholds"] == thresholds
    bad = owner.patch(
        f"{base(team)}/models/gpt/",
        {"promotion_thresholds": [{"metric": "x", "op": "==", "value": 1}]},
        format="json",
    )
    assert bad.status_code == 400
    assert "promotion_thresholds.0.op" in error(bad)["fields"]


def test_registry_settings(team, api):
    url = f"{base(team)}/registry-settings/"
    assert api(team.viewer).get(url).json() == {"protected_aliases": ["production"]}
    assert (
        api(team.engineer).put(url, {"protected_aliases": ["prod"]}, format="json").status_code
        == 403
    )
    done = api(team.compliance).put(url, {"protected_aliases": ["prod", "staging"]}, format="json")
    assert done.status_code == 200 and done.json() == {"protected_aliases": ["prod", "staging"]}
    bad = api(team.owner).put(url, {"protected_aliases": ["Not Valid"]}, format="json")
    assert bad.status_code == 400 and "protected_aliases.0" in error(bad)["fields"]


ROLE_MATRIX = [
    # (role, method, path suffix, body, expected status)
    ("viewer", "get", "/models/", None, 200),
    ("viewer", "get", "/models/gpt/versions/1/", None, 200),
    ("viewer", "post", "/models/", {"name": "m", "task": "text-generation"}, 403),
    ("viewer", "put", "/models/gpt/aliases/candidate/", {"version": 1}, 403),
    ("viewer", "patch", "/models/gpt/versions/1/", {"intended_use": "x"}, 403),
    ("viewer", "delete", "/models/gpt/versions/1/", None, 403),
    ("compliance", "post", "/models/", {"name": "m", "task": "text-generation"}, 403),
    ("engineer", "post", "/models/", {"name": "m", "task": "text-generation"}, 201),
    ("engineer", "put", "/models/gpt/aliases/candidate/", {"version": 1}, 200),
    ("owner", "put", "/models/gpt/aliases/candidate/", {"version": 1}, 200),
    ("outsider", "get", "/models/", None, 404),
    ("outsider", "get", "/models/gpt/", None, 404),
    ("outsider", "get", "/promotion-requests/", None, 404),
    ("outsider", "put", "/models/gpt/aliases/candidate/", {"version": 1}, 404),
]


@pytest.mark.parametrize("role, method, suffix, body, expected", ROLE_MATRIX)
def test_role_matrix(team, api, gpt, role, method, suffix, body, expected):
    client = api(getattr(team, role))
    call = getattr(client, method)
    response = call(base(team) + suffix, body, format="json") if body else call(base(team) + suffix)
    assert response.status_code == expected, response.content


def test_another_projects_user_cannot_decide_or_see_a_request(team, api, gpt, evaluate):
    v1, _ = gpt
    evaluate(v1, {"val_loss": 1.0})
    opened = api(team.engineer).put(
        f"{base(team)}/models/gpt/aliases/production/", {"version": 1}, format="json"
    )
    request_id = opened.json()["id"]

    response = api(team.outsider).post(
        f"{base(team)}/promotion-requests/{request_id}/approve/", {"reason": "x"}, format="json"
    )
    assert response.status_code == 404
    other = f"/api/v1/projects/{team.other_project.pk}/promotion-requests/{request_id}/approve/"
    response = api(team.outsider).post(other, {"reason": "x"}, format="json")
    assert response.status_code == 404
    assert PromotionRequest.objects.get().state == "pending"


def test_a_platform_admin_without_a_role_cannot_approve(team, api, gpt, evaluate):
    v1, _ = gpt
    evaluate(v1, {"val_loss": 1.0})
    opened = api(team.engineer).put(
        f"{base(team)}/models/gpt/aliases/production/", {"version": 1}, format="json"
    )
    response = api(team.admin).post(
        f"{base(team)}/promotion-requests/{opened.json()['id']}/approve/",
        {"reason": "x"},
        format="json",
    )
    assert response.status_code == 403
    assert "membership role" in error(response)["message"]


def test_withdraw_and_reject(team, api, gpt, evaluate):
    v1, v2 = gpt
    evaluate(v1, {"val_loss": 1.0})
    evaluate(v2, {"val_loss": 1.0})
    engineer = api(team.engineer)
    url = f"{base(team)}/models/gpt/aliases/production/"
    first = engineer.put(url, {"version": 1}, format="json").json()["id"]
    withdrawn = engineer.post(f"{base(team)}/promotion-requests/{first}/withdraw/")
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"

    second = engineer.put(url, {"version": 2}, format="json").json()["id"]
    rejected = api(team.owner).post(
        f"{base(team)}/promotion-requests/{second}/reject/", {"reason": "not yet"}, format="json"
    )
    assert rejected.status_code == 200 and rejected.json()["decision_reason"] == "not yet"
    no_reason = api(team.owner).post(
        f"{base(team)}/promotion-requests/{second}/approve/", {}, format="json"
    )
    assert no_reason.status_code in (400, 409)


def test_names_no_model_can_have_are_404_not_500(team, api):
    client = api(team.viewer)
    assert client.get(f"{base(team)}/models/a%00b/").status_code == 404
    assert client.get(f"{base(team)}/models/gpt/aliases/a%00b/").status_code == 404


def test_list_endpoints_do_not_grow_with_page_size(team, api, gpt, ready_version, evaluate):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from controlplane.registry.services import alias_set

    v1, v2 = gpt
    evaluate(v1, {"val_loss": 1.0})
    evaluate(v2, {"val_loss": 1.0})
    for name in ("a", "b", "c"):
        version = ready_version(name)
        alias_set(model=version.model, actor=team.engineer, alias="candidate", version=version)
        evaluate(version, {"val_loss": 1.0})
        alias_set(model=version.model, actor=team.engineer, alias="production", version=version)
    client = api(team.owner)
    client.get(f"{base(team)}/models/")  # the token's first use records last_used_at once

    def queries(url, page_size):
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url, {"page_size": page_size}).status_code == 200
        return len(captured)

    for url in ("/models/", "/models/gpt/versions/", "/promotion-requests/"):
        assert queries(base(team) + url, 1) == queries(base(team) + url, 10), url
