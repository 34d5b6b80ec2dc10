"""Rule 4's `trained_on_erased`: what follows for a model version flagged "trained on
erased data" (warn, block serving, require retraining) at deployment creation, at an
alias move to a protected alias or one a deployment follows, and in the scan; a waiver of
rule 4 on the version lets it pass. Flags are made directly (gdpr/models.ErasedDataFlag)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.policies.decide import ERASED_DATA_FIX
from controlplane.policies.errors import InvalidPolicy, PolicyDenied
from controlplane.registry.services import alias_set
from controlplane.serving.models import Deployment
from controlplane.serving.services import deployment_create
from tests.platform.policies import compliance_fixtures as scan_data
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


def flag(team, version):
    """`version` flagged by a completed erasure request; the request."""
    from controlplane.gdpr.models import ErasedDataFlag, SubjectRequest

    now = timezone.now()
    request = SubjectRequest.objects.create(
        project=version.model.project,
        kind="erasure",
        legal_basis="Art. 17(1)(b)",
        state="completed",
        filed_by=team.engineer,
        received_at=now,
        deadline_at=now + timedelta(days=30),
    )
    ErasedDataFlag.objects.create(
        model_version=version, request=request, dataset_versions=[{"id": 1, "label": "logs v1"}]
    )
    return request


def create(team, version, name="chat"):
    return deployment_create(
        project=team.project, actor=team.engineer, name=name, model=version.model, version=version
    )


# -- deployment creation -----------------------------------------------------------------


def test_warn_shows_the_flag_but_refuses_nothing(team, served_version, set_policy):
    version = served_version()
    flag(team, version)
    set_policy(pending_erasure={})  # enabled, trained_on_erased at its default: warn

    assert create(team, version).target_version == version


@pytest.mark.parametrize("mode", ["block_serving", "require_retraining"])
def test_a_flagged_version_is_not_deployed_where_the_policy_blocks_serving(
    team, served_version, set_policy, policy_events, mode
):
    version = served_version()
    request = flag(team, version)
    set_policy(pending_erasure={"trained_on_erased": mode})

    with pytest.raises(PolicyDenied) as refused:
        create(team, version)

    (finding,) = refused.value.decision.denials
    assert finding.rule == "pending_erasure"
    assert (finding.subject.type, finding.subject.id) == ("model_version", version.pk)
    assert f"erasure request #{request.pk}" in finding.reason
    assert finding.fix == ERASED_DATA_FIX
    assert "Retrain on the version page" in finding.fix
    assert not Deployment.objects.exists()
    (event,) = policy_events(team.project)
    assert event.action == "policy.denied" and event.payload["gate"] == "deployment.create"


def test_an_unflagged_version_deploys_under_block_serving(team, served_version, set_policy):
    version = served_version()
    flag(team, served_version())  # another version is flagged
    set_policy(pending_erasure={"trained_on_erased": "block_serving"})

    assert create(team, version).pk


def test_a_waiver_of_rule_4_on_the_version_lets_it_be_deployed(
    team, served_version, set_policy, waive, policy_events
):
    version = served_version()
    flag(team, version)
    set_policy(pending_erasure={"trained_on_erased": "block_serving"})
    waiver = waive(version, "pending_erasure")

    deployment = create(team, version)

    (event,) = policy_events(team.project)
    assert event.action == "policy.allowed"
    assert event.artifact_id == str(deployment.pk)
    assert event.payload["waived"][0]["waiver"] == waiver.pk


# -- alias moves ---------------------------------------------------------------------------


def test_a_flagged_version_is_not_moved_to_a_protected_alias(
    team, served_version, evaluated, set_policy
):
    version = served_version()
    evaluated(version, {"val_loss": 1.0})  # the registry's own gate of a promotion
    request = flag(team, version)
    set_policy(pending_erasure={"trained_on_erased": "block_serving"})  # rule 5 off: production

    with pytest.raises(PolicyDenied) as refused:
        alias_set(model=version.model, actor=team.engineer, alias="production", version=version)

    (finding,) = refused.value.decision.denials
    assert f"erasure request #{request.pk}" in finding.reason
    assert "@production is protected" in finding.reason
    # An alias nobody protects or follows still moves.
    moved = alias_set(model=version.model, actor=team.engineer, alias="staging", version=version)
    assert moved.version == version


def test_warn_lets_a_flagged_version_be_promoted_to_a_protected_alias(
    team, served_version, evaluated, set_policy
):
    from controlplane.registry.models import PromotionRequest

    version = served_version()
    evaluated(version, {"val_loss": 1.0})
    flag(team, version)
    set_policy(pending_erasure={"trained_on_erased": "warn"}, promotion={"aliases": ["release"]})

    outcome = alias_set(model=version.model, actor=team.engineer, alias="release", version=version)
    assert isinstance(outcome, PromotionRequest) and outcome.version == version


def test_an_alias_a_deployment_follows_is_not_switched_to_a_flagged_version(
    team, served_version, deploy, set_policy
):
    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    deploy("chat", alias="candidate", model=v1.model)
    v2 = served_version()
    request = flag(team, v2)
    set_policy(pending_erasure={"trained_on_erased": "block_serving"})

    with pytest.raises(PolicyDenied) as refused:
        alias_set(model=v2.model, actor=team.engineer, alias="candidate", version=v2)

    (finding,) = refused.value.decision.denials
    assert finding.reason.startswith("deployment chat follows @candidate: ")
    assert f"erasure request #{request.pk}" in finding.reason
    assert refused.value.decision.gate == "deployment.switch"


# -- the scan ------------------------------------------------------------------------------


def _scan_setup(team, mode: str):
    aliased = scan_data.model_version(team.project, team.owner)
    deployed = scan_data.model_version(team.project, team.owner)
    idle = scan_data.model_version(team.project, team.owner)  # flagged, serves nowhere
    for version in (aliased, deployed, idle):
        flag(team, version)
    scan_data.alias(aliased, "staging", team.owner)
    scan_data.deployment(team.project, team.owner, deployed)
    scan_data.set_policy(
        team.project,
        team.compliance,
        {"pending_erasure": {"enabled": True, "trained_on_erased": mode}},
    )
    scan_data.run_scan(team.project, team.compliance)
    return aliased, deployed, idle


def test_require_retraining_reports_every_flagged_version_still_serving(team):
    aliased, deployed, _idle = _scan_setup(team, "require_retraining")

    assert scan_data.open_violations(team.project) == {
        ("pending_erasure", "model_version", aliased.pk),
        ("pending_erasure", "model_version", deployed.pk),
    }


def test_block_serving_reports_only_what_its_gates_would_refuse(team):
    _aliased, deployed, _idle = _scan_setup(team, "block_serving")

    # @staging is neither protected nor followed: the version may stay there.
    assert scan_data.open_violations(team.project) == {
        ("pending_erasure", "model_version", deployed.pk)
    }


def test_warn_reports_nothing(team):
    _scan_setup(team, "warn")
    assert scan_data.open_violations(team.project) == set()


# -- the parameters ------------------------------------------------------------------------


def test_the_parameters_accept_only_their_choices(team, set_policy):
    with pytest.raises(InvalidPolicy) as invalid:
        set_policy(pending_erasure={"trained_on_erased": "ignore", "running_jobs": "kill"})
    assert invalid.value.fields == {
        "rules.pending_erasure.trained_on_erased": [
            "must be one of warn, block_serving, require_retraining"
        ],
        "rules.pending_erasure.running_jobs": ["must be one of wait, cancel"],
    }


def test_the_policy_page_offers_the_choices_as_selects(team, client):
    client.force_login(team.owner)
    html = client.get(f"/projects/{team.project.slug}/compliance/policy/").content.decode()
    assert '<select name="pending_erasure-trained_on_erased"' in html
    assert '<option value="require_retraining">require retraining</option>' in html
    assert '<select name="pending_erasure-running_jobs"' in html

    from tests.platform.policies.test_policy_pages import rule_post

    data = rule_post(
        team,
        "pending_erasure",
        enabled=True,
        trained_on_erased="require_retraining",
        reason="retrain what was trained on erased data",
    )
    assert client.post(f"/projects/{team.project.slug}/compliance/policy/", data).status_code == 302

    from controlplane.policies.selectors import policy_in_force

    rules = policy_in_force(team.project).rules["pending_erasure"]
    assert (rules["trained_on_erased"], rules["running_jobs"]) == ("require_retraining", "wait")


def test_the_api_lists_the_choices_and_names_a_bad_one(team, api):
    url = f"/api/v1/projects/{team.project.pk}/policy/"
    body = api(team.viewer).get(url).json()
    rule = next(rule for rule in body["catalogue"] if rule["key"] == "pending_erasure")
    params = {p["name"]: p for p in rule["params"]}
    assert params["trained_on_erased"]["default"] == "warn"
    assert params["trained_on_erased"]["choices"] == [
        "warn",
        "block_serving",
        "require_retraining",
    ]
    assert params["running_jobs"]["choices"] == ["wait", "cancel"]
    assert "deployment.create" in rule["gates"]

    response = api(team.owner).put(
        url,
        {
            "base_version": 0,
            "reason": "x",
            "rules": {"pending_erasure": {"running_jobs": "later"}},
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "rules.pending_erasure.running_jobs": ["must be one of wait, cancel"]
    }
