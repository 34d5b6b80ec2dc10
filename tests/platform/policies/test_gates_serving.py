"""The policy at serving: a deployment's creation (rules 5, 6) and the archive's retention
(rule 6), through the services, the API and the deploy page."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.audit.models import AuditEvent
from controlplane.policies.errors import PolicyDenied
from controlplane.serving.archive import retention_days_of, serving_settings_update
from controlplane.serving.models import Deployment
from controlplane.serving.services import deployment_create
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

RETENTION = {"retention_min_days": 7, "retention_max_days": 365}


def create(team, version, name="chat", **settings):
    return deployment_create(
        project=team.project,
        actor=team.engineer,
        name=name,
        model=version.model,
        version=version,
        **settings,
    )


# -- rule 6 at deployment creation --------------------------------------------------------


def test_a_deployment_without_archiving_is_refused_where_the_policy_requires_it(
    team, served_version, set_policy, policy_events
):
    version = served_version()
    set_policy(serving={"require_archive": True})

    with pytest.raises(PolicyDenied) as refused:
        create(team, version, archive_requests=False)

    (finding,) = refused.value.decision.denials
    assert (finding.rule, finding.reason) == (
        "serving",
        "deployment chat does not archive requests",
    )
    assert finding.fix == "turn on archiving of requests and responses for the deployment"
    assert not Deployment.objects.exists()
    (event,) = policy_events(team.project)
    # Not made yet: the refusal is on the project's timeline.
    assert (event.action, event.artifact_type, event.artifact_id) == (
        "policy.denied",
        "project",
        str(team.project.pk),
    )
    assert event.payload["gate"] == "deployment.create" and event.payload["policy"] == "project v1"


def test_an_archiving_deployment_is_created_and_the_allowance_is_on_its_timeline(
    team, served_version, set_policy, policy_events
):
    version = served_version()
    set_policy(serving={"require_archive": True})

    deployment = create(team, version)

    (event,) = policy_events(team.project)
    assert (event.action, event.artifact_type, event.artifact_id) == (
        "policy.allowed",
        "deployment",
        str(deployment.pk),
    )
    assert event.payload["rules"] == ["serving"]


def test_without_the_rule_archiving_may_be_off_and_nothing_is_decided(
    team, served_version, policy_events
):
    deployment = create(team, served_version(), archive_requests=False)
    assert deployment.archive_requests is False
    assert policy_events(team.project) == []


@pytest.mark.parametrize(("pii", "allowed"), [("off", False), ("redact", True), ("refuse", True)])
def test_input_pii_redaction_when_required(team, served_version, set_policy, pii, allowed):
    version = served_version()
    set_policy(serving={"require_input_pii_redaction": True})

    if allowed:
        assert create(team, version, guardrails={"pii": pii}).guardrails["pii"] == pii
        return
    with pytest.raises(PolicyDenied) as refused:
        create(team, version, guardrails={"pii": pii})
    assert refused.value.decision.denials[0].fix == (
        "set the deployment's input PII guardrail to redact or refuse"
    )


@pytest.mark.parametrize(("days", "allowed"), [(3, False), (7, True), (365, True), (400, False)])
def test_the_projects_retention_must_be_in_the_policys_range_to_deploy(
    team, served_version, set_policy, days, allowed
):
    version = served_version()
    serving_settings_update(project=team.project, actor=team.owner, retention_days=days)
    set_policy(serving=RETENTION)

    if allowed:
        assert create(team, version).pk
        return
    with pytest.raises(PolicyDenied) as refused:
        create(team, version)
    (finding,) = refused.value.decision.denials
    assert finding.reason == (
        f"the inference archive keeps records {days} days (the policy requires 7-365)"
    )
    assert finding.fix == "change the project's archive retention (serving settings) to 7-365 days"


# -- rule 5 at deployment creation --------------------------------------------------------


def test_a_deployment_serves_only_a_version_meeting_the_promotion_rule(
    team, served_version, evaluated, set_policy, policy_events
):
    version = served_version()
    set_policy(promotion={"thresholds": [{"metric": "val_loss", "op": "<=", "value": 2.0}]})

    with pytest.raises(PolicyDenied) as refused:
        create(team, version)
    assert refused.value.decision.denials[0].reason == "gpt v1 has no finished evaluation"
    event = policy_events(team.project)[-1]
    # A rule-5 refusal is about the version: on its timeline.
    assert (event.artifact_type, event.artifact_id) == ("modelversion", str(version.pk))

    evaluated(version, {"val_loss": 2.4})
    with pytest.raises(PolicyDenied) as refused:
        create(team, version)
    assert "gpt v1's val_loss is 2.4, > 2" in refused.value.decision.denials[0].reason

    evaluated(version, {"val_loss": 1.1})
    assert create(team, version).target_version == version


def test_the_promotion_rule_may_leave_deployments_alone(team, served_version, set_policy):
    set_policy(promotion={"apply_to_deployments": False})
    assert create(team, served_version()).pk


def test_a_waiver_on_the_version_lets_it_be_deployed_until_it_expires(
    team, served_version, set_policy, waive
):
    version = served_version()
    set_policy(promotion={"require_evaluation": True})
    waive(version, "promotion", expires_in=timedelta(minutes=-5))
    with pytest.raises(PolicyDenied):
        create(team, version)

    waiver = waive(version, "promotion")
    deployment = create(team, version)

    event = AuditEvent.objects.get(action="policy.allowed", artifact_id=str(deployment.pk))
    assert event.payload["waived"][0]["waiver"] == waiver.pk


# -- through the API and the page ---------------------------------------------------------


def test_a_refused_deployment_is_a_409_with_the_rule_reason_and_fix(
    team, served_version, set_policy, api
):
    served_version()
    set_policy(serving={"require_archive": True})

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/deployments/",
        {"name": "chat", "model": "gpt", "version": 1, "archive_requests": False},
        format="json",
    )

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert (error["code"], error["gate"], error["policy"]) == (
        "policy_denied",
        "deployment.create",
        "project v1",
    )
    denial = error["denials"][0]
    assert (denial["rule"], denial["rule_number"]) == ("serving", 6)
    assert denial["reason"] == "deployment chat does not archive requests"
    assert denial["fix"] == "turn on archiving of requests and responses for the deployment"
    assert not Deployment.objects.exists()


def test_a_refusal_under_an_idempotency_key_keeps_its_audit_event(
    team, served_version, set_policy, api, policy_events
):
    served_version()
    set_policy(serving={"require_archive": True})

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/deployments/",
        {"name": "chat", "model": "gpt", "version": 1, "archive_requests": False},
        format="json",
        HTTP_IDEMPOTENCY_KEY="deploy-chat-1",
    )

    assert response.status_code == 409
    assert [e.action for e in policy_events(team.project)] == ["policy.denied"]


def test_the_deploy_page_shows_the_refusal_as_a_banner(team, served_version, set_policy, client):
    served_version()
    set_policy(serving={"require_archive": True})
    client.force_login(team.engineer)

    response = client.post(
        f"/projects/{team.project.pk}/deployments/",
        {
            "source": "gpt:1",
            "name": "chat",
            "replicas": 1,
            "device": "cpu",
            "max_batch": 16,
            "max_queue": 64,
            "rate_limit_per_minute": 600,
            # archive_requests unticked
        },
    )

    assert response.status_code == 409
    html = response.content.decode()
    assert 'class="flash error policy-denied"' in html
    assert "<strong>Rule 6: Serving</strong>: deployment chat does not archive requests." in html
    assert (
        "<em>How to fix:</em> turn on archiving of requests and responses for the deployment."
        in html
    )
    assert 'value="chat"' in html  # the form keeps what was typed
    assert not Deployment.objects.exists()


# -- rule 6 at the serving settings -------------------------------------------------------


@pytest.mark.parametrize(("days", "allowed"), [(6, False), (7, True), (365, True), (366, False)])
def test_the_retention_can_only_be_set_within_the_policys_range(
    team, set_policy, policy_events, days, allowed
):
    set_policy(serving=RETENTION)

    if allowed:
        row = serving_settings_update(project=team.project, actor=team.owner, retention_days=days)
        (event,) = policy_events(team.project)
        assert (event.action, event.artifact_type, event.artifact_id) == (
            "policy.allowed",
            "servingsettings",
            str(row.pk),
        )
        assert retention_days_of(team.project) == days
        return
    with pytest.raises(PolicyDenied) as refused:
        serving_settings_update(project=team.project, actor=team.owner, retention_days=days)
    (finding,) = refused.value.decision.denials
    assert finding.fix == "choose a retention between 7 and 365 days"
    assert retention_days_of(team.project) == 30  # unchanged
    (event,) = policy_events(team.project)
    assert (event.action, event.artifact_type) == ("policy.denied", "project")
    assert event.payload["gate"] == "serving_settings.update"


def test_a_refused_retention_is_a_409_through_the_api(team, set_policy, api):
    set_policy(serving=RETENTION)
    url = f"/api/v1/projects/{team.project.pk}/serving-settings/"

    response = api(team.owner).patch(url, {"retention_days": 1000}, format="json")

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_denied"
    denial = error["denials"][0]
    assert denial["rule"] == "serving"
    assert denial["reason"] == (
        "the inference archive keeps records 1000 days (the policy requires 7-365)"
    )
    assert denial["fix"] == "choose a retention between 7 and 365 days"
    assert api(team.owner).get(url).json() == {"retention_days": 30}
    ok = api(team.owner).patch(url, {"retention_days": 90}, format="json")
    assert ok.status_code == 200 and ok.json() == {"retention_days": 90}


# -- rule 6 when a deployment changes, rules 5 and 6 when it starts again ------------------


def test_a_deployment_cannot_stop_archiving_where_the_policy_requires_it(
    team, served_version, set_policy, policy_events
):
    from controlplane.serving.services import deployment_update

    deployment = create(team, served_version())
    set_policy(serving={"require_archive": True})

    with pytest.raises(PolicyDenied) as refused:
        deployment_update(deployment=deployment, actor=team.engineer, archive_requests=False)

    assert refused.value.decision.denials[0].reason == "deployment chat does not archive requests"
    deployment.refresh_from_db()
    assert deployment.archive_requests is True
    (event,) = policy_events(team.project)
    assert (event.action, event.artifact_type, event.artifact_id) == (
        "policy.denied",
        "deployment",
        str(deployment.pk),
    )
    assert event.payload["gate"] == "deployment.update"
    # A change the rule does not look at is not asked about.
    deployment_update(deployment=deployment, actor=team.engineer, rate_limit_per_minute=60)
    assert len(policy_events(team.project)) == 1


def test_input_pii_redaction_cannot_be_turned_off_where_required(
    team, served_version, set_policy, policy_events, api
):
    from controlplane.serving.services import deployment_update

    deployment = create(team, served_version())
    set_policy(serving={"require_input_pii_redaction": True})
    url = f"/api/v1/projects/{team.project.pk}/deployments/chat/"

    response = api(team.engineer).patch(url, {"guardrails": {"pii": "off"}}, format="json")

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert (error["code"], error["gate"]) == ("policy_denied", "deployment.update")
    assert error["denials"][0]["fix"] == (
        "set the deployment's input PII guardrail to redact or refuse"
    )
    deployment_update(deployment=deployment, actor=team.engineer, guardrails={"pii": "refuse"})
    deployment.refresh_from_db()
    assert deployment.guardrails["pii"] == "refuse"
    assert [e.action for e in policy_events(team.project)] == ["policy.denied", "policy.allowed"]


def test_a_stopped_deployment_starts_again_only_if_it_complies_now(
    team, served_version, set_policy, policy_events
):
    from controlplane.serving.services import deployment_start, deployment_stop

    deployment = create(team, served_version(), archive_requests=False)
    deployment_stop(deployment=deployment, actor=team.engineer)
    set_policy(serving={"require_archive": True})

    with pytest.raises(PolicyDenied) as refused:
        deployment_start(deployment=deployment, actor=team.engineer)

    assert refused.value.decision.gate == "deployment.start"
    deployment.refresh_from_db()
    assert deployment.state == "stopped"
    assert policy_events(team.project)[-1].artifact_id == str(deployment.pk)


def test_a_stopped_deployment_of_an_unevaluated_version_does_not_start_under_rule_5(
    team, served_version, evaluated, set_policy
):
    from controlplane.serving.services import deployment_start, deployment_stop

    version = served_version()
    deployment = create(team, version)
    deployment_stop(deployment=deployment, actor=team.engineer)
    set_policy(promotion={"apply_to_deployments": True})

    with pytest.raises(PolicyDenied) as refused:
        deployment_start(deployment=deployment, actor=team.engineer)
    assert refused.value.decision.denials[0].reason == "gpt v1 has no finished evaluation"

    evaluated(version, {"val_loss": 1.0})
    assert deployment_start(deployment=deployment, actor=team.engineer).state == "running"
    event = AuditEvent.objects.filter(action="policy.allowed").get()
    assert (event.artifact_id, event.payload["gate"]) == (str(deployment.pk), "deployment.start")
