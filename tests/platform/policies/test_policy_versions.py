"""Editing a policy: every change a new version with who, why and the diff; an edit of a
stale version is refused (nothing lost); only owners and compliance officers edit a
project's policy, only staff the platform default; the policy in force follows."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from controlplane.audit.models import AuditEvent
from controlplane.policies.errors import Conflict, InvalidPolicy, NotAllowed
from controlplane.policies.models import PolicyVersion
from controlplane.policies.selectors import current_number, policy_in_force
from controlplane.policies.services import policy_update

pytestmark = pytest.mark.django_db

GPU_OFF = {"compute": {"enabled": True, "allowed_queues": ["cpu"]}}


def test_a_project_follows_the_built_in_default_until_edited(team):
    snapshot = policy_in_force(team.project)
    assert snapshot.label == "platform v0"
    assert not any(values["enabled"] for values in snapshot.rules.values())


def test_an_edit_makes_a_new_version_with_its_diff_and_audit(team):
    version = policy_update(
        project=team.project,
        actor=team.compliance,
        changes=GPU_OFF,
        reason="no GPUs yet",
        base_version=0,
    )
    assert version.number == 1
    assert version.diff["compute"]["allowed_queues"] == {"before": ["cpu", "gpu"], "after": ["cpu"]}
    assert policy_in_force(team.project).label == "project v1"
    event = AuditEvent.objects.filter(project_id=team.project.pk, action="policy.updated").get()
    assert event.payload["diff"] == version.diff
    assert event.payload["reason"] == "no GPUs yet"
    second = policy_update(
        project=team.project,
        actor=team.owner,
        changes={"compute": {"max_gpus_per_job": 0}},
        reason="tighter",
        base_version=1,
    )
    assert second.number == 2
    assert second.rules["compute"]["allowed_queues"] == ["cpu"]  # kept from v1
    assert current_number(team.project) == 2


def test_a_stale_base_version_is_refused_and_nothing_is_written(team):
    policy_update(
        project=team.project, actor=team.owner, changes=GPU_OFF, reason="a", base_version=0
    )
    with pytest.raises(Conflict, match="v1 now"):
        policy_update(
            project=team.project,
            actor=team.compliance,
            changes={"compute": {"max_gpus_per_job": 1}},
            reason="b",
            base_version=0,
        )
    assert PolicyVersion.objects.filter(policy__project=team.project).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_edits_of_one_version_one_wins(team):
    outcomes = []
    barrier = threading.Barrier(2)

    def edit(actor, gpus):
        try:
            barrier.wait()
            policy_update(
                project=team.project,
                actor=actor,
                changes={"compute": {"enabled": True, "max_gpus_per_job": gpus}},
                reason=f"{gpus} GPUs",
                base_version=0,
            )
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=edit, args=(team.owner, 1)),
        threading.Thread(target=edit, args=(team.compliance, 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "ok"]
    assert PolicyVersion.objects.filter(policy__project=team.project).count() == 1


@pytest.mark.parametrize("role", ["engineer", "viewer", "outsider"])
def test_only_owners_and_compliance_officers_edit(team, role):
    with pytest.raises(NotAllowed):
        policy_update(
            project=team.project,
            actor=getattr(team, role),
            changes=GPU_OFF,
            reason="x",
            base_version=0,
        )


def test_the_platform_default_is_edited_by_staff_and_followed(team):
    with pytest.raises(NotAllowed):
        policy_update(project=None, actor=team.owner, changes=GPU_OFF, reason="x", base_version=0)
    policy_update(project=None, actor=team.admin, changes=GPU_OFF, reason="default", base_version=0)
    assert policy_in_force(team.project).label == "platform v1"
    assert policy_in_force(team.project).rules["compute"]["allowed_queues"] == ["cpu"]
    # A project's first edit starts from the default it followed.
    own = policy_update(
        project=team.project,
        actor=team.owner,
        changes={"compute": {"max_gpus_per_job": 0}},
        reason="ours",
        base_version=0,
    )
    assert own.rules["compute"]["allowed_queues"] == ["cpu"]
    assert policy_in_force(team.project).label == "project v1"
    assert policy_in_force(team.other_project).label == "platform v1"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"reason": ""}, "reason"),
        ({"base_version": None}, "base_version"),
        ({"base_version": "1"}, "base_version"),
        ({"changes": {}}, "rules"),
        ({"changes": {"compute": {"enabled": False}}}, "rules"),  # no change
    ],
)
def test_bad_edits_name_the_field(team, kwargs, field):
    arguments = {"changes": GPU_OFF, "reason": "r", "base_version": 0, **kwargs}
    with pytest.raises(InvalidPolicy) as error:
        policy_update(project=team.project, actor=team.owner, **arguments)
    assert field in error.value.fields
