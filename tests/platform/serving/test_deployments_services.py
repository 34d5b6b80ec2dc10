"""Deployment services: create by version or alias, guardrail defaults from the training
data's pipeline, checks, the alias hook, and the audit trail of every change."""

from __future__ import annotations

import pytest

from controlplane.serving.errors import Conflict, InvalidRequest, NotFound
from controlplane.serving.guardrail_defaults import PII_TYPES
from controlplane.serving.services import (
    deployment_create,
    deployment_scale,
    deployment_start,
    deployment_stop,
    deployment_update,
)
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    audit_actions_fixture,
    deploy_fixture,
    pipeline_dataset_fixture,
    served_version_fixture,
)

pytestmark = pytest.mark.django_db

PIPELINE = {
    "dataset_version_id": 1,
    "pipeline": {
        "stages": [
            {"normalize": {}},
            {"pii": {"types": ["PHONE", "EMAIL"], "placeholder": "<{type}>"}},
            {"toxicity": {"threshold": 0.05, "lexicon": ""}},
            {"exact_dedup": {}},
        ],
        "strict": False,
    },
}


def test_deploy_a_ready_version(team, served_version, audit_actions):
    version = served_version()

    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="chat",
        model=version.model,
        version=version.number,
        replicas=2,
        max_batch=8,
    )

    assert (deployment.pinned_version, deployment.target_version, deployment.alias) == (
        version,
        version,
        "",
    )
    assert (deployment.follows, deployment.state, deployment.replicas) == ("v1", "running", 2)
    assert audit_actions(team.project) == ["deployment.created"]


def test_deploy_an_alias(team, served_version):
    from controlplane.registry.services import alias_set

    version = served_version()
    alias_set(model=version.model, actor=team.engineer, alias="candidate", version=version)

    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="chat",
        model=version.model,
        alias="@candidate",
    )

    assert (deployment.follows, deployment.pinned_version, deployment.target_version) == (
        "@candidate",
        None,
        version,
    )


def test_deploy_an_image_model(team, served_version):
    version = served_version("digits", task="image-generation")
    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="digits",
        model=version.model,
        version=version,
    )
    assert deployment.model.task == "image-generation"


def test_a_version_that_is_not_ready_cannot_be_deployed(team, served_version):
    version = served_version(state="registering")
    with pytest.raises(Conflict, match="v1 is registering"):
        deployment_create(
            project=team.project, actor=team.engineer, name="chat", model=version.model, version=1
        )


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"alias": "production"}, "alias"),  # no such alias
        ({"version": 9}, "version"),
        ({"version": 1, "alias": "candidate"}, "version"),
        ({}, "version"),
        ({"version": 1, "replicas": 0}, "replicas"),
        ({"version": 1, "replicas": 17}, "replicas"),
        ({"version": 1, "max_batch": True}, "max_batch"),
        ({"version": 1, "device": "tpu"}, "device"),
        ({"version": 1, "rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"version": 1, "name": "Chat Bot"}, "name"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(team, served_version, settings, field):
    version = served_version()
    settings = {"name": "chat", **settings}
    with pytest.raises(InvalidRequest) as caught:
        deployment_create(
            project=team.project, actor=team.engineer, model=version.model, **settings
        )
    assert field in caught.value.fields


def test_a_taken_name_is_a_conflict(team, deploy):
    deploy("chat")
    with pytest.raises(Conflict, match="already exists"):
        deploy("chat")


def test_another_project_s_model_is_not_found(team, served_version):
    version = served_version(project=team.other_project)
    with pytest.raises(NotFound):
        deployment_create(
            project=team.project, actor=team.engineer, name="chat", model=version.model, version=1
        )


# Guardrail defaults ----------------------------------------------------------------------


def test_guardrails_default_to_the_training_data_pipeline(
    team, deploy, served_version, pipeline_dataset
):
    data = pipeline_dataset(PIPELINE, slug="plays")
    version = served_version(datasets=[data])

    deployment = deploy(version=version)

    rails = deployment.guardrails
    assert (rails["pii"], rails["pii_types"], rails["toxicity_threshold"]) == (
        "redact",
        ["EMAIL", "PHONE"],
        0.05,
    )
    assert (rails["pii_output"], rails["toxicity"]) == ("redact", "flag")
    assert rails["source"] == f"pipeline job {data.produced_by_id} of dataset plays v1"


def test_a_pipeline_without_a_pii_stage_leaves_inputs_unredacted(
    deploy, served_version, pipeline_dataset
):
    params = {"pipeline": {"stages": [{"normalize": {}}, {"toxicity": {"threshold": 0.1}}]}}
    version = served_version(datasets=[pipeline_dataset(params)])

    rails = deploy(version=version).guardrails

    assert (rails["pii"], rails["pii_types"], rails["toxicity_threshold"]) == ("off", [], 0.1)


def test_several_pipelines_combine_to_the_strictest(deploy, served_version, pipeline_dataset):
    strict = {
        "pipeline": {"stages": [{"pii": {"types": ["IBAN"]}}, {"toxicity": {"threshold": 0.01}}]}
    }
    version = served_version(datasets=[pipeline_dataset(PIPELINE), pipeline_dataset(strict)])

    rails = deploy(version=version).guardrails

    assert rails["pii_types"] == ["EMAIL", "IBAN", "PHONE"]
    assert rails["toxicity_threshold"] == 0.01
    assert rails["source"].endswith("and 1 more")


def test_a_pipeline_job_in_the_lineage_counts_too(team, deploy, served_version):
    from controlplane.jobs.models import Job

    job = Job.objects.create(
        project=team.project,
        kind="data_pipeline",
        state="succeeded",
        params={},
        created_by=team.engineer,
    )  # no `pipeline`: the engine's default stages
    rails = deploy(version=served_version(jobs=[job])).guardrails

    assert (rails["pii"], rails["pii_types"]) == ("redact", list(PII_TYPES))
    assert rails["source"] == f"pipeline job {job.pk}"


def test_no_pipeline_in_the_lineage_gives_the_platform_defaults(deploy):
    rails = deploy().guardrails
    assert rails == {
        "pii": "redact",
        "pii_types": [],
        "pii_output": "redact",
        "toxicity": "flag",
        "toxicity_threshold": 0.02,
        "source": "platform",
    }


def test_explicit_guardrails_override_the_defaults(deploy):
    rails = deploy(guardrails={"toxicity": "refuse", "toxicity_threshold": 0.5}).guardrails
    assert (rails["toxicity"], rails["toxicity_threshold"], rails["pii"]) == (
        "refuse",
        0.5,
        "redact",
    )
    assert rails["source"] == "custom (defaults from platform)"


@pytest.mark.parametrize(
    ("guardrails", "field"),
    [
        ({"toxicity_threshold": 1.5}, "guardrails.toxicity_threshold"),
        ({"toxicity_threshold": "0.1"}, "guardrails.toxicity_threshold"),
        ({"pii": "maybe"}, "guardrails.pii"),
        ({"pii_output": "refuse"}, "guardrails.pii_output"),
        ({"pii_types": ["EMAIL", "SHOE_SIZE"]}, "guardrails.pii_types"),
        ({"source": "me"}, "guardrails.source"),
        ({"toxicty": "flag"}, "guardrails.toxicty"),
    ],
)
def test_bad_guardrails_are_refused_naming_the_field(deploy, guardrails, field):
    with pytest.raises(InvalidRequest) as caught:
        deploy(guardrails=guardrails)
    assert field in caught.value.fields


def test_the_platform_knows_the_engine_s_pii_types():
    from engine.data.pii import PII_TYPES as ENGINE_PII_TYPES

    assert PII_TYPES == ENGINE_PII_TYPES


# Changes and their audit trail -----------------------------------------------------------


def test_every_change_is_audited(team, deploy, audit_actions):
    deployment = deploy()

    deployment_scale(deployment=deployment, actor=team.engineer, replicas=3)
    deployment_scale(deployment=deployment, actor=team.engineer, replicas=3)  # no change
    deployment_update(
        deployment=deployment,
        actor=team.engineer,
        guardrails={"pii": "refuse"},
        rate_limit_per_minute=60,
    )
    deployment_stop(deployment=deployment, actor=team.owner, reason="budget")
    deployment_stop(deployment=deployment, actor=team.owner)  # already stopped
    deployment_start(deployment=deployment, actor=team.owner)

    deployment.refresh_from_db()
    assert (deployment.replicas, deployment.rate_limit_per_minute) == (3, 60)
    assert deployment.guardrails["pii"] == "refuse"
    assert (deployment.state, deployment.reason, deployment.stopped_at) == ("running", "", None)
    assert audit_actions(team.project) == [
        "deployment.created",
        "deployment.scaled",
        "deployment.updated",
        "deployment.stopped",
        "deployment.started",
    ]


def test_an_update_keeps_the_guardrails_it_is_not_given(team, deploy):
    deployment = deploy(guardrails={"toxicity": "refuse"})
    deployment = deployment_update(
        deployment=deployment, actor=team.engineer, guardrails={"toxicity_threshold": 0.2}
    )
    assert (deployment.guardrails["toxicity"], deployment.guardrails["toxicity_threshold"]) == (
        "refuse",
        0.2,
    )


def test_moving_an_alias_retargets_the_deployments_following_it(
    team, deploy, served_version, audit_actions, django_capture_on_commit_callbacks
):
    from controlplane.registry.services import alias_set

    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    follower = deploy("follower", alias="candidate", model=v1.model)
    pinned = deploy("pinned", version=v1)
    v2 = served_version()

    with django_capture_on_commit_callbacks(execute=True):
        alias_set(model=v1.model, actor=team.owner, alias="candidate", version=v2)

    follower.refresh_from_db()
    pinned.refresh_from_db()
    assert (follower.target_version, pinned.target_version) == (v2, v1)
    assert audit_actions(team.project)[-1] == "deployment.switching"


def test_starting_a_follower_again_serves_where_the_alias_points_now(team, deploy, served_version):
    from controlplane.registry.services import alias_set

    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    deployment = deploy(alias="candidate", model=v1.model)
    deployment_stop(deployment=deployment, actor=team.owner)
    v2 = served_version()
    alias_set(model=v1.model, actor=team.owner, alias="candidate", version=v2)  # hook not run

    deployment = deployment_start(deployment=deployment, actor=team.owner)

    assert deployment.target_version == v2


def test_a_version_a_deployment_serves_cannot_be_deleted_until_it_is_stopped(team, served_version):
    from controlplane.registry.errors import Conflict as RegistryConflict
    from controlplane.registry.services import version_delete

    version = served_version()
    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="chat",
        model=version.model,
        version=version.number,
    )

    with pytest.raises(RegistryConflict, match="served by deployment"):
        version_delete(version=version, actor=team.owner)
    deployment_stop(deployment=deployment, actor=team.engineer, reason="retiring v1")
    assert version_delete(version=version, actor=team.owner).state == "deleted"
