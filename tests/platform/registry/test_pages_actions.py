"""The registry pages' buttons, through the real services: register from a job's page,
move and roll back aliases, four-eyes promotion from the review queue, edit and delete."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def _messages(response) -> str:
    return " ".join(str(m) for m in response.context["messages"]) if response.context else ""


def test_register_a_new_model_from_the_job_page(team, client, make_model_job, finish_sent):
    from controlplane.registry.models import ModelVersion

    job = make_model_job()
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/jobs/{job.pk}/register/",
        {"target": "new", "new_name": "shakespeare-gpt", "description": "first try"},
    )
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{team.project.pk}/models/shakespeare-gpt/v1/"
    version = ModelVersion.objects.get(model__name="shakespeare-gpt")
    assert version.state == "registering" and version.created_by == team.engineer
    page = client.get(response["Location"]).content.decode()
    assert "registering" in page and 'hx-trigger="every 2s"' in page  # refreshes itself
    finish_sent()
    page = client.get(response["Location"]).content.decode()
    assert "state-ready" in page and "model.safetensors" in page
    assert 'hx-trigger="every 2s"' not in page


def test_register_a_new_version_of_an_existing_model(
    team, client, make_model_job, ready_version, finish_sent
):
    ready_version("gpt")
    job = make_model_job()
    client.force_login(team.owner)
    response = client.post(
        f"/projects/{team.project.pk}/jobs/{job.pk}/register/",
        {"target": "existing", "existing": "gpt"},
    )
    assert response["Location"] == f"/projects/{team.project.pk}/models/gpt/v2/"


def test_registration_refusals_are_shown_on_the_job_page(team, client, make_model_job):
    job = make_model_job(state="failed")
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/jobs/{job.pk}/register/",
        {"target": "new", "new_name": "gpt"},
        follow=True,
    )
    assert f"job {job.pk} is failed" in _messages(response)
    response = client.post(
        f"/projects/{team.project.pk}/jobs/{job.pk}/register/",
        {"target": "new", "new_name": "bad name!"},
        follow=True,
    )
    assert "new_name" in _messages(response)


def test_move_an_alias_then_roll_it_back(team, client, ready_version):
    from controlplane.registry.models import ModelAlias

    v1 = ready_version("gpt")
    ready_version("gpt")
    client.force_login(team.engineer)
    url = f"/projects/{team.project.pk}/models/gpt/aliases/"
    client.post(url, {"action": "move", "alias": "candidate", "version": "1"})
    response = client.post(
        url,
        {"action": "move", "alias": "candidate", "version": "2", "reason": "lower loss"},
        follow=True,
    )
    assert "@candidate now points at v2" in _messages(response)
    alias = ModelAlias.objects.get(name="candidate")
    assert alias.version.number == 2 and alias.previous_version == v1
    response = client.post(url, {"action": "rollback", "alias": "candidate"}, follow=True)
    alias.refresh_from_db()
    assert alias.version.number == 1
    history = client.get(f"/projects/{team.project.pk}/models/gpt/v1/").content.decode()
    assert "model_alias.moved" in history[history.index('id="history"') :]


def test_protected_alias_goes_through_review_and_the_requester_cannot_approve(
    team, client, ready_version, evaluate
):
    from controlplane.registry.models import ModelAlias, PromotionRequest

    version = ready_version("gpt")
    client.force_login(team.engineer)
    url = f"/projects/{team.project.pk}/models/gpt/aliases/"
    # No evaluation yet: the gate refuses and says why.
    response = client.post(url, {"alias": "production", "version": "1"}, follow=True)
    assert "cannot promote gpt v1 to @production" in _messages(response)
    evaluate(version, {"val_loss": 1.4})
    response = client.post(
        url, {"alias": "production", "version": "1", "reason": "ship it"}, follow=True
    )
    assert "waits for a reviewer" in _messages(response)
    request = PromotionRequest.objects.get(state="pending")
    assert not ModelAlias.objects.filter(name="production").exists()

    decide = f"/projects/{team.project.pk}/reviews/{request.pk}/decide/"
    # The requester is an engineer: not a reviewer at all.
    assert client.post(decide, {"decision": "approve", "reason": "mine"}).status_code == 403
    client.force_login(team.compliance)
    response = client.post(decide, {"decision": "approve", "reason": "eval passes"}, follow=True)
    assert "approved" in _messages(response)
    assert ModelAlias.objects.get(name="production").version == version
    queue = client.get(f"/projects/{team.project.pk}/reviews/").content.decode()
    assert "eval passes" in queue and "state-approved" in queue


def test_an_owner_cannot_approve_their_own_request(team, client, ready_version, evaluate):
    from controlplane.registry.models import PromotionRequest

    evaluate(ready_version("gpt"), {"val_loss": 1.4})
    client.force_login(team.owner)
    client.post(
        f"/projects/{team.project.pk}/models/gpt/aliases/", {"alias": "production", "version": "1"}
    )
    request = PromotionRequest.objects.get(state="pending")
    response = client.post(
        f"/projects/{team.project.pk}/reviews/{request.pk}/decide/",
        {"decision": "approve", "reason": "trust me"},
        follow=True,
    )
    request.refresh_from_db()
    assert request.state == "pending"
    assert "own" in _messages(response)
    # ...but may withdraw it.
    client.post(
        f"/projects/{team.project.pk}/reviews/{request.pk}/decide/", {"decision": "withdraw"}
    )
    request.refresh_from_db()
    assert request.state == "withdrawn"


def test_reviewers_set_thresholds_and_the_gate_applies_them(team, client, ready_version, evaluate):
    from controlplane.registry.models import RegisteredModel

    evaluate(ready_version("gpt"), {"val_loss": 2.4})
    client.force_login(team.compliance)
    url = f"/projects/{team.project.pk}/models/gpt/edit/"
    response = client.post(url, {"thresholds": "val_loss <= two"}, follow=True)
    assert "not a finite number" in _messages(response)
    client.post(url, {"thresholds": "val_loss <= 2.0\n\n"})
    assert RegisteredModel.objects.get(name="gpt").promotion_thresholds == [
        {"metric": "val_loss", "op": "<=", "value": 2.0}
    ]
    page = client.get(f"/projects/{team.project.pk}/models/gpt/").content.decode()
    assert "<code>val_loss &lt;= 2.0</code>" in page
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/models/gpt/aliases/",
        {"alias": "production", "version": "1"},
        follow=True,
    )
    assert "val_loss" in _messages(response) and "2.4" in _messages(response)


def test_edit_the_card_then_delete_a_version(team, client, ready_version):
    from controlplane.registry.models import ModelVersion

    ready_version("gpt")
    client.force_login(team.engineer)
    base = f"/projects/{team.project.pk}/models/gpt/v1/"
    client.post(base + "edit/", {"intended_use": "Pastiche **only**.", "limitations": "Old."})
    page = client.get(base).content.decode()
    assert "Pastiche <strong>only</strong>." in page
    client.post(
        f"/projects/{team.project.pk}/models/gpt/aliases/", {"alias": "candidate", "version": "1"}
    )
    response = client.post(base + "delete/", follow=True)
    assert "alias" in _messages(response)
    assert ModelVersion.objects.get(number=1).state == "ready"
    client.post(
        f"/projects/{team.project.pk}/models/gpt/aliases/",
        {"action": "delete", "alias": "candidate"},
    )
    response = client.post(base + "delete/")
    assert response["Location"] == f"/projects/{team.project.pk}/models/gpt/"
    assert ModelVersion.objects.get(number=1).state == "deleted"
    assert "state-deleted" in client.get(base).content.decode()


def test_hostile_input_on_the_registry_pages_is_a_message_or_404_never_500(
    team, client, ready_version, make_model_job
):
    ready_version("gpt")
    job = make_model_job()
    client.force_login(team.owner)
    project = team.project.pk
    posts = [
        (f"/projects/{project}/models/gpt/aliases/", {"alias": "production", "version": "²"}),
        (f"/projects/{project}/models/gpt/aliases/", {"alias": "Bad Alias!", "version": "1"}),
        (f"/projects/{project}/models/gpt/aliases/", {"alias": "latest", "version": "1"}),
        (f"/projects/{project}/models/gpt/aliases/", {"action": "rollback", "alias": "nope"}),
        (f"/projects/{project}/models/gpt/aliases/", {"action": "delete", "alias": "\x00"}),
        (f"/projects/{project}/models/gpt/edit/", {"thresholds": "val_loss <= nan"}),
        (f"/projects/{project}/models/gpt/edit/", {"thresholds": "val_loss ~ 1"}),
        (f"/projects/{project}/models/gpt/v1/edit/", {"intended_use": "x" * 30_000}),
        (f"/projects/{project}/reviews/999/decide/", {"decision": "approve", "reason": "x"}),
        (f"/projects/{project}/jobs/{job.pk}/register/", {"target": "sideways"}),
        (f"/projects/{project}/jobs/{job.pk}/register/", {"target": "existing", "existing": "x"}),
    ]
    for url, data in posts:
        response = client.post(url, data)
        assert response.status_code in (302, 404), (url, data, response.status_code)
    for url in [
        f"/projects/{project}/models/gpt/?a=²&b=-1",
        f"/projects/{project}/models/%E2%80%AEgpt/",
        f"/projects/{project}/models/gpt/v99999999999999999999/",
    ]:
        assert client.get(url).status_code in (200, 404), url


def test_reviewers_choose_the_protected_aliases_on_the_review_page(team, client, ready_version):
    from controlplane.audit.models import AuditEvent
    from controlplane.registry.selectors import protected_aliases

    ready_version("gpt")
    url = f"/projects/{team.project.pk}/reviews/settings/"
    client.force_login(team.engineer)
    page = client.get(f"/projects/{team.project.pk}/reviews/").content.decode()
    assert "@production" in page and "Save protected aliases" not in page
    assert client.post(url, {"aliases": "staging"}).status_code == 403
    client.force_login(team.compliance)
    response = client.post(url, {"aliases": "production, staging"}, follow=True)
    assert "Protected aliases: @production, @staging." in _messages(response)
    assert protected_aliases(team.project) == ["production", "staging"]
    assert AuditEvent.objects.filter(action="registry_settings.updated").exists()
    response = client.post(url, {"aliases": "Not An Alias"}, follow=True)
    assert "alias" in _messages(response).lower()
    assert protected_aliases(team.project) == ["production", "staging"]
    # Now moving @staging opens a promotion request instead of moving it.
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/models/gpt/aliases/",
        {"alias": "staging", "version": "1"},
        follow=True,
    )
    assert "cannot promote gpt v1 to @staging" in _messages(response)  # no evaluation yet
