"""A refusal reads the same in the API and on a page: rule number and title, reason, fix,
and a link to the rule on the policy page."""

import pytest
from django.template.loader import render_to_string

pytestmark = pytest.mark.django_db


def test_the_policy_page_is_where_refusals_link(team):
    from controlplane.policies.gates import policy_url

    assert policy_url(team.project) == "/projects/alpha/compliance/policy/"
    assert policy_url(None) == "/compliance/policy/"


def test_the_api_and_the_banner_link_to_the_rule(team, api, client, set_policy, make_upload):
    set_policy(compute={"enabled": True, "allowed_queues": ["gpu"]})
    upload = make_upload(team.project, team.engineer, b"a\nb\n")

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "inspect", "params": {"upload_id": upload.pk}},
        format="json",
    )
    assert response.status_code == 409
    assert (
        response.json()["error"]["denials"][0]["rule_url"]
        == "/projects/alpha/compliance/policy/#rule-compute"
    )

    client.force_login(team.engineer)
    page = client.post(
        f"/projects/{team.project.pk}/uploads/{upload.pk}/inspect/",
        {"upload_id": upload.pk, "preview_records": 5},
    )
    html = page.content.decode()
    assert page.status_code == 200
    assert "Rule 7: Compute" in html
    assert 'href="/projects/alpha/compliance/policy/#rule-compute"' in html


def test_the_include_renders_nothing_without_a_refusal():
    assert render_to_string("policies/_denied.html", {"denied": None}).strip() == ""
