"""The policy through the API: read by every member, edited by owners and compliance
officers with a base version (409 when stale, nothing written), bad parameters a 400
naming the field, the platform default edited by staff only."""

from __future__ import annotations

import pytest

from tests.platform.policies.page_fixtures import edit

pytestmark = pytest.mark.django_db


def url(team, tail: str = "") -> str:
    return f"/api/v1/projects/{team.project.pk}/policy/{tail}"


def test_a_project_that_never_edited_follows_the_default(team, api):
    body = api(team.viewer).get(url(team)).json()
    assert body["scope"] == "platform" and body["version"] == 0 and body["label"] == "platform v0"
    assert set(body["rules"]) == {
        "licences",
        "data_preparation",
        "residency",
        "pending_erasure",
        "promotion",
        "serving",
        "compute",
    }
    assert not any(rule["enabled"] for rule in body["rules"].values())
    licences = next(rule for rule in body["catalogue"] if rule["key"] == "licences")
    assert licences["number"] == 1 and licences["explanation"]
    assert licences["params"][0] == {
        "name": "allowed_licences",
        "label": "Allowed licences",
        "help": licences["params"][0]["help"],
        "default": [],
    }


def test_owner_edits_and_the_history_records_who_why_and_the_diff(team, api):
    client = api(team.owner)
    change = {"licences": {"enabled": True, "allowed_licences": ["mit", "CC-BY-4.0"]}}
    response = client.put(
        url(team), {"base_version": 0, "reason": "only open data", "rules": change}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["scope"], body["version"], body["label"]) == ("project", 1, "project v1")
    assert body["rules"]["licences"]["allowed_licences"] == ["MIT", "CC-BY-4.0"]

    versions = client.get(url(team, "versions/")).json()["results"]
    assert [v["number"] for v in versions] == [1]
    detail = client.get(url(team, "versions/1/")).json()
    assert detail["reason"] == "only open data" and detail["created_by"] == "owner"
    assert detail["diff"]["licences"]["enabled"] == {"before": False, "after": True}
    assert client.get(url(team, "versions/2/")).status_code == 404


def test_compliance_officer_edits_too(team, api):
    response = api(team.compliance).put(
        url(team),
        {"base_version": 0, "reason": "cap gpus", "rules": {"compute": {"max_gpus_per_job": 2}}},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["rules"]["compute"]["max_gpus_per_job"] == 2


def test_unknown_licence_is_a_400_naming_the_entry_with_the_nearest_ids(team, api):
    response = api(team.owner).put(
        url(team),
        {
            "base_version": 0,
            "reason": "x",
            "rules": {"licences": {"allowed_licences": ["MIT", "Apache-2"]}},
        },
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    message = error["fields"]["rules.licences.allowed_licences.1"][0]
    assert "'Apache-2'" in message and "Apache-2.0" in message
    assert api(team.owner).get(url(team)).json()["version"] == 0


def test_bad_parameters_name_their_field(team, api):
    response = api(team.owner).put(
        url(team),
        {
            "base_version": 0,
            "reason": "x",
            "rules": {"serving": {"retention_min_days": 0}, "nope": {"a": 1}},
        },
        format="json",
    )
    fields = response.json()["error"]["fields"]
    assert response.status_code == 400
    assert "rules.serving.retention_min_days" in fields and "rules.nope" in fields


def test_a_stale_base_version_is_a_409_and_nothing_is_written(team, api):
    """Two editors both saw v0; the second one's save is refused, the first one's kept."""
    first, second = api(team.owner), api(team.compliance)
    seen = first.get(url(team)).json()["version"]
    assert second.get(url(team)).json()["version"] == seen
    ok = first.put(
        url(team),
        {"base_version": seen, "reason": "a", "rules": {"compute": {"max_gpus_per_job": 2}}},
        format="json",
    )
    late = second.put(
        url(team),
        {"base_version": seen, "reason": "b", "rules": {"compute": {"max_gpus_per_job": 4}}},
        format="json",
    )
    assert ok.status_code == 200 and late.status_code == 409
    assert late.json()["error"]["code"] == "conflict" and "v1" in late.json()["error"]["message"]
    now = first.get(url(team)).json()
    assert now["version"] == 1 and now["rules"]["compute"]["max_gpus_per_job"] == 2
    assert len(first.get(url(team, "versions/")).json()["results"]) == 1


def test_viewers_and_engineers_read_but_cannot_edit(team, api):
    body = {"base_version": 0, "reason": "x", "rules": {"compute": {"enabled": True}}}
    for user in (team.viewer, team.engineer):
        client = api(user)
        assert client.get(url(team)).status_code == 200
        assert client.put(url(team), body, format="json").status_code == 403


def test_outsiders_get_404(team, api):
    client = api(team.outsider)
    body = {"base_version": 0, "reason": "x", "rules": {"compute": {"enabled": True}}}
    assert client.get(url(team)).status_code == 404
    assert client.get(url(team, "versions/")).status_code == 404
    assert client.put(url(team), body, format="json").status_code == 404


def test_unknown_fields_and_missing_base_version_are_refused(team, api):
    client = api(team.owner)
    response = client.put(url(team), {"reason": "x", "rules": {}, "extra": 1}, format="json")
    assert response.status_code == 400 and "extra" in response.json()["error"]["fields"]
    response = client.put(url(team), {"reason": "x", "rules": {"compute": {}}}, format="json")
    assert response.status_code == 400 and "base_version" in response.json()["error"]["fields"]


def test_staff_edit_the_default_and_projects_follow_it(team, api):
    body = {"base_version": 0, "reason": "gpu cap", "rules": {"compute": {"enabled": True}}}
    assert api(team.owner).put("/api/v1/policy/default/", body, format="json").status_code == 403
    response = api(team.admin).put("/api/v1/policy/default/", body, format="json")
    assert response.status_code == 200 and response.json()["label"] == "platform v1"
    followed = api(team.viewer).get(url(team)).json()
    assert followed["label"] == "platform v1" and followed["rules"]["compute"]["enabled"]
    history = api(team.admin).get("/api/v1/policy/default/versions/").json()["results"]
    assert [v["reason"] for v in history] == ["gpu cap"]
    assert api(team.viewer).get("/api/v1/policy/default/").json()["version"] == 1


def test_a_project_edit_starts_from_the_default(team, api):
    edit(None, team.admin, {"compute": {"enabled": True, "max_gpus_per_job": 1}})
    response = api(team.owner).put(
        url(team),
        {"base_version": 0, "reason": "x", "rules": {"licences": {"enabled": True}}},
        format="json",
    )
    rules = response.json()["rules"]
    assert rules["compute"] == {
        "enabled": True,
        "allowed_queues": ["cpu", "gpu"],
        "max_gpus_per_job": 1,
    }
    assert rules["licences"]["enabled"]
