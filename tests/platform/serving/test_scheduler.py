"""The scheduler, driven by fake nodes' sync rounds: placement, switches that drop no
traffic, scaling, stops, lost nodes, failures, and two nodes syncing at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.serving.models import Deployment, ServeNode
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    FakeNode,
    audit_actions_fixture,
    deploy_fixture,
    pipeline_dataset_fixture,
    replicas_of,
    served_version_fixture,
)
from tests.threads import in_threads

pytestmark = pytest.mark.django_db


def routes(answer, key="alpha/chat"):
    return sorted(route.replica_id for route in answer.routes.get(key, []))


def info(answer, key="alpha/chat"):
    return next(d for d in answer.deployments if d.key == key)


def test_a_deployment_is_placed_on_the_node_with_the_most_room(deploy):
    small, large = FakeNode("small", capacity=1), FakeNode("large", capacity=3)
    small.sync()
    large.sync()
    deployment = deploy(replicas=2)

    answer = small.sync()

    placed = replicas_of(deployment)
    assert [(r.node.name, r.state) for r in placed] == [("large", "pending"), ("large", "pending")]
    assert answer.replicas == []  # nothing for the small node
    assert routes(answer) == []  # nothing ready yet
    answer = large.sync()
    spec = answer.replicas[0]
    assert (spec.deployment, spec.model, spec.version, spec.task) == (
        "alpha/chat",
        "gpt",
        1,
        "text-generation",
    )
    assert {f.name for f in spec.files} == {"model.safetensors", "config.json", "tokenizer.json"}
    assert len(spec.subject_key) == 64 and not spec.draining
    assert spec.guardrails.source == "platform"


def test_ready_replicas_are_routed_with_their_node_url(deploy):
    node = FakeNode("n1")
    deployment = deploy(replicas=2, rate_limit_per_minute=30)
    node.sync()
    node.ready()

    answer = node.sync()

    ready = replicas_of(deployment, "ready")
    assert len(ready) == 2 and all(r.ready_at is not None for r in ready)
    assert routes(answer) == sorted(r.id for r in ready)
    assert {route.node_url for route in answer.routes["alpha/chat"]} == {"http://n1:8100"}
    assert (info(answer).state, info(answer).version, info(answer).rate_limit_per_minute) == (
        "running",
        1,
        30,
    )


def test_an_alias_move_switches_replicas_without_a_gap(
    team, deploy, served_version, audit_actions, django_capture_on_commit_callbacks
):
    from controlplane.registry.services import alias_set

    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    deployment = deploy(alias="candidate", model=v1.model, replicas=2)
    node = FakeNode("n1", capacity=4)
    node.sync()
    node.ready()
    node.sync()
    old = {r.id for r in replicas_of(deployment, "ready")}

    v2 = served_version()
    with django_capture_on_commit_callbacks(execute=True):
        alias_set(model=v1.model, actor=team.owner, alias="candidate", version=v2)

    deployment.refresh_from_db()
    assert deployment.target_version == v2
    answer = node.sync()  # two v2 replicas placed, the v1 ones still serve
    new = {r.id for r in replicas_of(deployment, "pending")}
    assert len(new) == 2 and all(r.version == v2 for r in replicas_of(deployment, "pending"))
    assert set(routes(answer)) == old
    assert info(answer).version == 1
    node.ready(sorted(new)[0])
    answer = node.sync()  # one v2 ready: both versions serve, nothing drains yet
    assert set(routes(answer)) == old | {sorted(new)[0]}
    assert "deployment.switched" not in audit_actions(team.project)

    node.ready()
    answer = node.sync()  # both v2 ready: the v1 replicas drain
    assert set(routes(answer)) == new
    assert info(answer).version == 2
    draining = {s.replica_id for s in answer.replicas if s.draining}
    assert draining == old
    assert {r.id for r in replicas_of(deployment, "draining")} == old
    node.finish_draining()
    node.sync()
    stopped = replicas_of(deployment, "stopped")
    assert {r.id for r in stopped} == old and all(r.ended_at for r in stopped)
    node.sync()
    assert audit_actions(team.project) == [
        "deployment.created",
        "deployment.switching",
        "deployment.switched",
    ]


def test_a_switch_without_room_drains_one_old_replica_at_a_time(
    team, deploy, served_version, django_capture_on_commit_callbacks
):
    from controlplane.registry.services import alias_set

    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    deployment = deploy(alias="candidate", model=v1.model, replicas=1)
    node = FakeNode("n1", capacity=1)
    node.sync()
    node.ready()
    node.sync()
    v2 = served_version()
    with django_capture_on_commit_callbacks(execute=True):
        alias_set(model=v1.model, actor=team.owner, alias="candidate", version=v2)

    node.sync()
    assert [(r.version.number, r.state) for r in replicas_of(deployment)] == [(1, "draining")]
    node.sync()  # still draining: nothing more happens
    assert [(r.version.number, r.state) for r in replicas_of(deployment)] == [(1, "draining")]
    node.finish_draining()
    node.sync()
    node.ready()
    answer = node.sync()
    assert [(r.version.number, r.state) for r in replicas_of(deployment)] == [
        (1, "stopped"),
        (2, "ready"),
    ]
    assert len(routes(answer)) == 1


def test_the_scheduler_catches_up_with_an_alias_whose_hook_was_lost(
    team, deploy, served_version, audit_actions
):
    from controlplane.registry.services import alias_set

    v1 = served_version()
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    deployment = deploy(alias="candidate", model=v1.model)
    v2 = served_version()
    alias_set(model=v1.model, actor=team.owner, alias="candidate", version=v2)  # hook not run

    FakeNode("n1").sync()

    deployment.refresh_from_db()
    assert deployment.target_version == v2
    assert audit_actions(team.project)[-1] == "deployment.switching"


def test_scaling_up_places_more_and_scaling_down_drains_the_newest(team, deploy):
    from controlplane.serving.services import deployment_scale

    deployment = deploy(replicas=1)
    node = FakeNode("n1")
    node.sync()
    node.ready()
    node.sync()
    first = replicas_of(deployment)[0].id

    deployment_scale(deployment=deployment, actor=team.engineer, replicas=3)
    node.sync()
    assert len(replicas_of(deployment, "pending")) == 2

    deployment_scale(deployment=deployment, actor=team.engineer, replicas=1)
    answer = node.sync()
    assert [r.id for r in replicas_of(deployment, "ready")] == [first]
    assert routes(answer) == [first]
    node.finish_draining()
    node.sync()
    assert len(replicas_of(deployment, "stopped")) == 2


def test_stop_drains_every_replica_and_start_places_them_again(team, deploy):
    from controlplane.serving.services import deployment_start, deployment_stop

    deployment = deploy(replicas=2)
    node = FakeNode("n1")
    node.sync()
    node.ready()
    node.sync()

    deployment_stop(deployment=deployment, actor=team.engineer, reason="maintenance")
    answer = node.sync()
    assert routes(answer) == []
    assert (info(answer).state, info(answer).reason) == ("stopped", "maintenance")
    assert all(spec.draining for spec in answer.replicas) and len(answer.replicas) == 2
    node.finish_draining()
    node.sync()
    assert len(replicas_of(deployment, "stopped")) == 2

    deployment_start(deployment=deployment, actor=team.engineer)
    node.sync()
    assert len(replicas_of(deployment, "pending", "starting")) == 2


def test_a_silent_node_loses_its_replicas_and_they_are_placed_elsewhere(deploy):
    deployment = deploy(replicas=2)
    first = FakeNode("first", capacity=2)
    first.sync()
    first.ready()
    first.sync()
    second = FakeNode("second", capacity=2)
    ServeNode.objects.filter(name="first").update(last_seen=timezone.now() - timedelta(seconds=11))

    answer = second.sync()

    lost = replicas_of(deployment, "lost")
    assert len(lost) == 2 and all("stopped reporting" in r.error for r in lost)
    assert [r.node.name for r in replicas_of(deployment, "pending")] == ["second", "second"]
    assert routes(answer) == []
    second.ready()
    assert len(routes(second.sync())) == 2


def test_a_restarted_node_loses_the_replicas_it_ran_before(deploy):
    deployment = deploy(replicas=1)
    node = FakeNode("n1")
    node.sync()
    node.ready()
    node.sync()
    before = replicas_of(deployment)[0]

    node.restart()
    answer = node.sync()

    before.refresh_from_db()
    assert before.state == "lost" and "restarted" in before.error
    (spec,) = answer.replicas
    assert spec.replica_id != before.id


def test_a_pending_replica_the_node_has_not_reported_yet_stays_pending(deploy):
    deployment = deploy(replicas=1)
    node = FakeNode("n1")
    node.sync()
    node.running.clear()  # its report was made before it read the answer

    node.sync()

    assert [r.state for r in replicas_of(deployment)] == ["pending"]


def test_failed_replicas_are_replaced_until_three_in_a_row_fail_the_deployment(
    team, deploy, audit_actions
):
    from controlplane.serving.services import deployment_start

    deployment = deploy(replicas=1)
    node = FakeNode("n1")
    for attempt in range(3):
        answer = node.sync()
        (spec,) = answer.replicas
        node.fail(spec.replica_id, f"CUDA out of memory ({attempt})")
    answer = node.sync()

    deployment.refresh_from_db()
    assert deployment.state == "failed"
    assert "3 replicas of gpt v1 failed in a row" in deployment.reason
    assert "CUDA out of memory (2)" in deployment.reason
    assert len(replicas_of(deployment, "failed")) == 3
    assert answer.replicas == []
    assert (info(answer).state, info(answer).reason) == ("stopped", deployment.reason)
    assert audit_actions(team.project)[-1] == "deployment.failed"

    deployment_start(deployment=deployment, actor=team.engineer)
    answer = node.sync()
    assert len(answer.replicas) == 1  # a fresh count after a start


def test_a_ready_replica_resets_the_failure_count(deploy):
    deployment = deploy(replicas=1)
    node = FakeNode("n1")
    for _ in range(2):
        (spec,) = node.sync().replicas
        node.fail(spec.replica_id)
    node.sync()
    node.ready()
    (spec,) = node.sync().replicas
    node.fail(spec.replica_id)

    node.sync()

    deployment.refresh_from_db()
    assert deployment.state == "running"
    assert len(replicas_of(deployment, "pending", "starting")) == 1


def test_a_cuda_deployment_waits_for_a_cuda_node(deploy):
    deployment = deploy(device="cuda")
    FakeNode("cpu-node").sync()
    assert replicas_of(deployment) == []

    answer = FakeNode("gpu-node", device="cuda").sync()

    assert [spec.device for spec in answer.replicas] == ["cuda"]


def test_a_guardrail_change_reaches_the_replica_specs(team, deploy):
    from controlplane.serving.services import deployment_update

    deployment = deploy()
    node = FakeNode("n1")
    node.sync()

    deployment_update(deployment=deployment, actor=team.engineer, guardrails={"pii": "refuse"})
    answer = node.sync()
    (spec,) = [s for s in answer.replicas if not s.draining]  # the old one drains: not ready

    assert (spec.guardrails.pii, spec.guardrails.source) == (
        "refuse",
        "custom (defaults from platform)",
    )


def test_the_answer_lists_recently_revoked_tokens(team):
    from controlplane.accounts.services import api_token_create, api_token_revoke

    token, _raw = api_token_create(user=team.engineer, name="ci", scopes=["inference"])
    api_token_revoke(token=token, actor=team.engineer)

    answer = FakeNode("n1").sync()

    assert token.pk in answer.revoked_token_ids


@pytest.mark.django_db(transaction=True)
def test_two_nodes_syncing_at_once_place_exactly_the_replicas_wanted(deploy):
    deployment = deploy(replicas=3)
    nodes = [FakeNode(f"n{i}", capacity=3) for i in range(4)]
    for node in nodes:  # known and live before the race
        node.sync()
    Deployment.objects.filter(pk=deployment.pk).update(replicas=5)

    results = in_threads(*(lambda node=node: node.sync() for node in nodes))

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(replicas_of(deployment, "pending", "starting")) == 5


def test_a_steady_sync_costs_a_fixed_number_of_queries_plus_one_write_a_replica(
    deploy, served_version
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    node = FakeNode("n1", capacity=16)

    def steady_cost():
        node.sync()
        node.ready()
        node.sync()
        with CaptureQueriesContext(connection) as queries:
            node.sync()
        return len(queries), len(node.running)

    deploy("one", version=served_version())
    few, replicas_few = steady_cost()
    for index in range(6):
        deploy(f"more-{index}", version=served_version(f"model-{index}"))
    many, replicas_many = steady_cost()

    assert many - few == replicas_many - replicas_few  # only the per-replica row writes grow


def test_a_guardrail_or_archive_change_replaces_running_replicas_without_a_gap(
    team, deploy, audit_actions
):
    from controlplane.serving.services import deployment_update

    deployment = deploy(replicas=1)
    node = FakeNode("n1", capacity=2)
    node.sync()
    node.ready()
    node.sync()
    (old,) = {r.id for r in replicas_of(deployment, "ready")}

    deployment = deployment_update(deployment=deployment, actor=team.owner, archive_requests=False)
    assert deployment.config_generation == 2
    answer = node.sync()  # a replica with the new settings is placed; the old one serves
    (new,) = {r.id for r in replicas_of(deployment, "pending")}
    assert routes(answer) == [old]
    assert next(s for s in answer.replicas if s.replica_id == new).archive is False

    node.ready(new)
    answer = node.sync()  # the new one is ready: the old one drains
    assert routes(answer) == [new]
    assert {s.replica_id for s in answer.replicas if s.draining} == {old}
    node.finish_draining()
    node.sync()
    assert audit_actions(team.project)[-2:] == ["deployment.updated", "deployment.reconfigured"]

    deployment_update(deployment=deployment, actor=team.owner, rate_limit_per_minute=5)
    node.sync()
    assert {r.id for r in replicas_of(deployment, "ready")} == {
        new
    }  # a rate limit needs no restart
