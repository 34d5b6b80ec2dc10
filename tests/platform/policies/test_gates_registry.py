"""The policy at the registry: alias moves (rules 4, 5), promotion approvals (rule 5's
compliance approval), and the deployments that follow a moving alias (rules 5, 6), through
the services, the API and the pages; every decision audited with the policy version."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.policies.errors import PolicyDenied
from controlplane.registry.models import ModelAlias, PromotionRequest, PromotionState
from controlplane.registry.selectors import protected_aliases
from controlplane.registry.services import alias_set, promotion_approve
from tests.platform.policies.model_fixtures import (  # noqa: F401 - fixtures
    evaluated_fixture,
    policy_events_fixture,
    set_policy_fixture,
    waive_fixture,
)
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    deploy_fixture,
    served_version_fixture,
)

pytestmark = pytest.mark.django_db

STRICT = {"thresholds": [{"metric": "val_loss", "op": "<=", "value": 2.0}]}


def only(events, action: str):
    return [e for e in events if e.action == action]


# -- rule 5 at an alias move --------------------------------------------------------------


def test_a_promotion_below_the_policys_thresholds_is_refused_with_the_fix(
    team, served_version, evaluated, set_policy, policy_events
):
    version = served_version()
    evaluated(version, {"val_loss": 2.5})  # the model has no thresholds of its own
    set_policy(promotion=STRICT)

    with pytest.raises(PolicyDenied) as refused:
        alias_set(model=version.model, actor=team.engineer, alias="production", version=version)

    (finding,) = refused.value.decision.denials
    assert finding.rule == "promotion"
    assert "gpt v1's val_loss is 2.5, > 2" in finding.reason
    assert finding.fix == "run an evaluate job on gpt v1 and fix what it reports"
    assert not PromotionRequest.objects.exists()
    (event,) = policy_events(team.project)
    assert (event.action, event.artifact_type, event.artifact_id) == (
        "policy.denied",
        "modelversion",
        str(version.pk),
    )
    assert event.payload["gate"] == "alias.move" and event.payload["policy"] == "project v1"
    assert event.payload["denials"][0]["rule"] == "promotion"


def test_a_promotion_meeting_the_thresholds_opens_its_request_and_the_allowance_is_audited(
    team, served_version, evaluated, set_policy, policy_events
):
    version = served_version()
    evaluated(version, {"val_loss": 1.5})
    set_policy(promotion=STRICT)

    request = alias_set(
        model=version.model, actor=team.engineer, alias="production", version=version
    )

    assert isinstance(request, PromotionRequest)
    (event,) = policy_events(team.project)
    assert (event.action, event.artifact_type, event.artifact_id) == (
        "policy.allowed",
        "modelversion",
        str(version.pk),
    )
    assert event.payload["rules"] == ["promotion"] and event.payload["policy"] == "project v1"


def test_without_an_enabled_rule_a_move_decides_nothing_and_audits_nothing(
    team, served_version, policy_events
):
    version = served_version()
    alias_set(model=version.model, actor=team.engineer, alias="candidate", version=version)
    assert policy_events(team.project) == []


def test_the_policys_aliases_are_protected_besides_the_registry_setting(
    team, served_version, evaluated, set_policy, api
):
    version = served_version()
    evaluated(version, {"val_loss": 1.5})
    assert protected_aliases(team.project) == ["production"]
    set_policy(promotion={"aliases": ["production", "staging"], "require_evaluation": True})

    assert protected_aliases(team.project) == ["production", "staging"]
    outcome = alias_set(model=version.model, actor=team.engineer, alias="staging", version=version)
    assert isinstance(outcome, PromotionRequest)  # no direct move any more
    assert not ModelAlias.objects.filter(name="staging").exists()
    # The registry's own setting is unchanged (what its API reads and replaces).
    body = api(team.viewer).get(f"/api/v1/projects/{team.project.pk}/registry-settings/").json()
    assert body == {"protected_aliases": ["production"]}


def test_a_waiver_lets_a_promotion_pass_until_it_expires(
    team, served_version, evaluated, set_policy, waive, policy_events
):
    version = served_version()
    evaluated(version, {"val_loss": 2.5})
    set_policy(promotion=STRICT)
    expired = waive(version, "promotion", expires_in=timedelta(seconds=-1))

    with pytest.raises(PolicyDenied):
        alias_set(model=version.model, actor=team.engineer, alias="production", version=version)

    waiver = waive(version, "promotion")
    request = alias_set(
        model=version.model, actor=team.engineer, alias="production", version=version
    )

    assert isinstance(request, PromotionRequest)
    events = policy_events(team.project)
    assert [e.action for e in events] == ["policy.denied", "policy.allowed"]
    assert events[1].payload["waived"][0]["waiver"] == waiver.pk != expired.pk


# -- rule 5 at the approval: a compliance officer -----------------------------------------


@pytest.fixture
def pending(team, served_version, evaluated, set_policy):
    """A promotion of gpt v1 to @production requested by the engineer, under a policy that
    requires a compliance officer's approval."""
    version = served_version()
    evaluated(version, {"val_loss": 1.5})
    set_policy(promotion={"require_compliance_approval": True})
    return alias_set(model=version.model, actor=team.engineer, alias="production", version=version)


def test_an_owner_cannot_approve_when_the_policy_requires_a_compliance_officer(
    team, pending, policy_events
):
    with pytest.raises(PolicyDenied) as refused:
        promotion_approve(request=pending, actor=team.owner, reason="looks good")

    (finding,) = refused.value.decision.denials
    assert finding.reason == "@production needs the approval of a compliance officer"
    assert "compliance role" in finding.fix
    pending.refresh_from_db()
    assert pending.state == PromotionState.PENDING
    assert not ModelAlias.objects.filter(name="production").exists()
    denied = only(policy_events(team.project), "policy.denied")
    assert denied[0].payload["gate"] == "promotion.approve"
    assert denied[0].actor_id == team.owner.pk


def test_a_compliance_officer_approves_and_the_alias_moves(team, pending, policy_events):
    promotion_approve(request=pending, actor=team.compliance, reason="checked")

    pending.refresh_from_db()
    assert pending.state == PromotionState.APPROVED
    assert ModelAlias.objects.get(name="production").version_id == pending.version_id
    allowed = only(policy_events(team.project), "policy.allowed")
    assert [e.payload["gate"] for e in allowed] == ["alias.move", "promotion.approve"]


def test_the_requester_is_still_refused_by_the_four_eyes_rule(team, pending):
    from controlplane.registry.errors import NotAllowed

    pending.requested_by = team.compliance
    pending.save(update_fields=["requested_by"])
    with pytest.raises(NotAllowed):
        promotion_approve(request=pending, actor=team.compliance, reason="mine")


def test_an_approval_refused_by_the_policy_is_a_409_with_the_rule_reason_and_fix(
    team, pending, api
):
    response = api(team.owner).post(
        f"/api/v1/projects/{team.project.pk}/promotion-requests/{pending.pk}/approve/",
        {"reason": "ship it"},
        format="json",
    )

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_denied" and error["policy"] == "project v1"
    denial = error["denials"][0]
    assert (denial["rule"], denial["rule_number"], denial["title"]) == ("promotion", 5, "Promotion")
    assert denial["reason"] == "@production needs the approval of a compliance officer"
    assert denial["fix"]


def test_the_review_queue_shows_the_refusal_as_a_banner(team, pending, client):
    client.force_login(team.owner)
    response = client.post(
        f"/projects/{team.project.pk}/reviews/{pending.pk}/decide/",
        {"decision": "approve", "reason": "ship it"},
        follow=True,
    )

    html = response.content.decode()
    assert 'class="flash error policy-denied"' in html
    assert (
        "<strong>Rule 5: Promotion</strong>: @production needs the approval of a compliance "
        "officer." in html
    )
    assert "<em>How to fix:</em> ask a member with the compliance role" in html
    # Read once: the next visit has no banner.
    again = client.get(f"/projects/{team.project.pk}/reviews/").content.decode()
    assert 'class="flash error policy-denied"' not in again


# -- rules 5 and 6 for the deployments following a moving alias ---------------------------


@pytest.fixture
def follower(team, served_version, deploy):
    """@candidate at gpt v1, followed by deployment `chat` that passes input PII to the
    model; gpt v2 ready to take the alias."""
    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    chat = deploy("chat", alias="candidate", model=v1.model, guardrails={"pii": "off"})
    return chat, served_version()


def test_an_alias_move_is_refused_when_a_follower_would_break_rule_6(
    team, follower, set_policy, policy_events
):
    chat, v2 = follower
    set_policy(serving={"require_input_pii_redaction": True})

    with pytest.raises(PolicyDenied) as refused:
        alias_set(model=v2.model, actor=team.engineer, alias="candidate", version=v2)

    (finding,) = refused.value.decision.denials
    assert finding.rule == "serving"
    assert finding.reason.startswith("deployment chat passes personal data in requests")
    assert ModelAlias.objects.get(name="candidate").version.number == 1
    (event,) = policy_events(team.project)
    assert (event.action, event.artifact_type, event.artifact_id) == (
        "policy.denied",
        "deployment",
        str(chat.pk),
    )
    assert event.payload["gate"] == "deployment.switch"


def test_a_follower_that_stops_archiving_refuses_the_move_where_archiving_is_required(
    team, served_version, deploy, set_policy
):
    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    deploy("quiet", alias="candidate", model=v1.model, archive_requests=False)
    v2 = served_version()
    set_policy(serving={"require_archive": True})

    with pytest.raises(PolicyDenied) as refused:
        alias_set(model=v2.model, actor=team.engineer, alias="candidate", version=v2)

    assert refused.value.decision.denials[0].reason == "deployment quiet does not archive requests"


def test_an_alias_move_is_refused_when_a_follower_would_serve_an_unevaluated_version(
    team, follower, set_policy
):
    chat, v2 = follower
    set_policy(promotion={"aliases": ["production"], "apply_to_deployments": True})

    with pytest.raises(PolicyDenied) as refused:
        alias_set(model=v2.model, actor=team.engineer, alias="candidate", version=v2)

    (finding,) = refused.value.decision.denials
    assert finding.rule == "promotion"
    assert finding.reason == "deployment chat follows @candidate: gpt v2 has no finished evaluation"


def test_an_alias_moves_when_its_followers_comply_and_each_switch_is_audited(
    team, follower, set_policy, policy_events
):
    from controlplane.serving.services import deployment_update

    chat, v2 = follower
    deployment_update(deployment=chat, actor=team.engineer, guardrails={"pii": "redact"})
    set_policy(serving={"require_input_pii_redaction": True})

    moved = alias_set(model=v2.model, actor=team.engineer, alias="candidate", version=v2)

    assert moved.version == v2
    (event,) = policy_events(team.project)
    assert (event.action, event.artifact_type, event.artifact_id) == (
        "policy.allowed",
        "deployment",
        str(chat.pk),
    )
    assert event.payload["gate"] == "deployment.switch"


def test_a_stopped_follower_does_not_hold_the_alias_back(team, follower, set_policy):
    from controlplane.serving.services import deployment_stop

    chat, v2 = follower
    deployment_stop(deployment=chat, actor=team.engineer)
    set_policy(serving={"require_input_pii_redaction": True})

    assert (
        alias_set(model=v2.model, actor=team.engineer, alias="candidate", version=v2).version == v2
    )


def test_a_refused_alias_move_is_a_409_naming_the_deployment(team, follower, set_policy, api):
    chat, v2 = follower
    set_policy(serving={"require_input_pii_redaction": True})

    response = api(team.engineer).put(
        f"/api/v1/projects/{team.project.pk}/models/gpt/aliases/candidate/",
        {"version": 2},
        format="json",
    )

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_denied" and error["gate"] == "deployment.switch"
    denial = error["denials"][0]
    assert denial["rule"] == "serving" and "deployment chat" in denial["reason"]
    assert denial["fix"] == "set the deployment's input PII guardrail to redact or refuse"
    assert denial["subject"] == {"type": "deployment", "id": chat.pk, "label": "deployment chat"}


def test_the_model_page_shows_a_refused_move_as_a_banner(team, follower, set_policy, client):
    set_policy(serving={"require_input_pii_redaction": True})
    client.force_login(team.engineer)

    response = client.post(
        f"/projects/{team.project.pk}/models/gpt/aliases/",
        {"alias": "candidate", "version": "2"},
        follow=True,
    )

    html = response.content.decode()
    assert 'class="flash error policy-denied"' in html
    assert "<strong>Rule 6: Serving</strong>: deployment chat passes personal data" in html
    assert (
        "<em>How to fix:</em> set the deployment&#x27;s input PII guardrail to redact or refuse."
        in html
    )


# -- rule 4: no promotion of a model trained on data with an unfinished erasure -----------


@pytest.fixture
def trained_on_held(team, served_version):
    """gpt v1 trained on plays v2, derived from plays v1, which holds an approved erasure
    (ERA-7) not finished yet. -> (version, hold)"""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_create
    from controlplane.policies.models import ErasureHold

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    raw, clean = (
        DatasetVersion.objects.create(
            dataset=dataset, number=n, state="ready", created_by=team.engineer
        )
        for n in (1, 2)
    )
    clean.parents.add(raw)
    hold = ErasureHold.objects.create(
        project=team.project, dataset_version=raw, reference="ERA-7", placed_by=team.compliance
    )
    return served_version(datasets=[clean]), hold


def test_a_model_trained_on_data_awaiting_erasure_is_not_promoted(
    team, trained_on_held, set_policy, policy_events
):
    version, _hold = trained_on_held
    set_policy(pending_erasure={})

    with pytest.raises(PolicyDenied) as refused:
        alias_set(model=version.model, actor=team.engineer, alias="candidate", version=version)

    (finding,) = refused.value.decision.denials
    assert finding.rule == "pending_erasure"
    assert finding.reason == (
        "gpt v1 was trained on plays v2: erasure ERA-7 on plays v1 is approved but not finished"
    )
    assert finding.fix == "wait until the erasure has finished and use the version it rewrites"
    assert not ModelAlias.objects.exists()
    (event,) = policy_events(team.project)
    assert (event.action, event.payload["gate"]) == ("policy.denied", "alias.move")


def test_once_the_erasure_is_finished_the_model_moves(team, trained_on_held, set_policy):
    from django.utils import timezone

    version, hold = trained_on_held
    set_policy(pending_erasure={})
    hold.released_at, hold.released_by = timezone.now(), team.compliance
    hold.save()

    moved = alias_set(model=version.model, actor=team.engineer, alias="candidate", version=version)

    assert moved.version == version


def test_a_hold_placed_after_the_request_refuses_its_approval(
    team, served_version, evaluated, set_policy
):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_create
    from controlplane.policies.models import ErasureHold

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Mail", slug="mail", kind="text"
    )
    data = DatasetVersion.objects.create(
        dataset=dataset, number=1, state="ready", created_by=team.engineer
    )
    version = served_version(datasets=[data])
    evaluated(version, {"val_loss": 1.0})
    set_policy(pending_erasure={})
    request = alias_set(
        model=version.model, actor=team.engineer, alias="production", version=version
    )
    ErasureHold.objects.create(
        project=team.project, dataset_version=data, reference="ERA-9", placed_by=team.compliance
    )

    with pytest.raises(PolicyDenied) as refused:
        promotion_approve(request=request, actor=team.compliance, reason="ok")

    assert refused.value.decision.gate == "promotion.approve"
    assert "erasure ERA-9 on mail v1" in refused.value.decision.denials[0].reason
    request.refresh_from_db()
    assert request.state == PromotionState.PENDING


def test_a_pending_erasure_waiver_on_the_version_lets_it_move(
    team, trained_on_held, set_policy, waive
):
    version, _hold = trained_on_held
    set_policy(pending_erasure={})
    waive(version, "pending_erasure")

    assert (
        alias_set(
            model=version.model, actor=team.engineer, alias="candidate", version=version
        ).version
        == version
    )


def test_a_move_refused_for_a_pending_erasure_is_a_409(team, trained_on_held, set_policy, api):
    set_policy(pending_erasure={})

    response = api(team.engineer).put(
        f"/api/v1/projects/{team.project.pk}/models/gpt/aliases/candidate/",
        {"version": 1},
        format="json",
    )

    assert response.status_code == 409, response.content
    denial = response.json()["error"]["denials"][0]
    assert (denial["rule"], denial["rule_number"], denial["title"]) == (
        "pending_erasure",
        4,
        "Pending erasure",
    )
    assert "ERA-7" in denial["reason"] and denial["fix"]
