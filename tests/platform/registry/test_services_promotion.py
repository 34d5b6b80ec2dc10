"""Aliases, the evaluation gate, four-eyes promotion, rollback, deletion, settings."""

from __future__ import annotations

import pytest

from controlplane.audit.models import AuditEvent
from controlplane.registry.errors import Conflict, InvalidRequest, NotAllowed, NotFound
from controlplane.registry.models import (
    ModelAlias,
    PromotionRequest,
    PromotionState,
    VersionState,
)
from controlplane.registry.services import (
    alias_delete,
    alias_rollback,
    alias_set,
    evaluation_gate,
    model_update,
    promotion_approve,
    promotion_reject,
    promotion_withdraw,
    registry_settings_update,
    version_delete,
    version_update,
)
from controlplane.storage import object_store

pytestmark = pytest.mark.django_db

THRESHOLDS = [{"metric": "val_loss", "op": "<=", "value": 2.0}]


@pytest.fixture
def two_versions(ready_version, team):
    v1 = ready_version("gpt")
    v2 = ready_version("gpt")
    model_update(model=v1.model, actor=team.owner, promotion_thresholds=THRESHOLDS)
    v1.model.refresh_from_db()
    v2.model = v1.model
    return v1, v2


def test_an_unprotected_alias_moves_at_once_and_is_audited(team, two_versions):
    v1, v2 = two_versions
    alias = alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    moved = alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v2)

    assert isinstance(moved, ModelAlias)
    assert moved.pk == alias.pk and moved.version == v2 and moved.previous_version == v1
    events = AuditEvent.objects.filter(action="model_alias.moved").order_by("seq")
    assert [(e.payload["previous_version"], e.payload["version"]) for e in events] == [
        (None, 1),
        (1, 2),
    ]
    assert events[1].actor_id == team.engineer.pk


def test_only_a_ready_version_gets_an_alias(team, make_model_job, two_versions):
    from controlplane.registry.services import version_register

    v1, _ = two_versions
    registering = version_register(
        project=team.project, actor=team.engineer, job=make_model_job(), model_name="gpt"
    )
    with pytest.raises(Conflict, match="v3 is registering"):
        alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=registering)


def test_a_bad_alias_name_is_refused(team, two_versions):
    v1, _ = two_versions
    for bad in ("latest", "v2", "Prod", "", "a b"):
        with pytest.raises(InvalidRequest):
            alias_set(model=v1.model, actor=team.engineer, alias=bad, version=v1)


def test_promoting_without_an_evaluation_is_refused(team, two_versions):
    v1, _ = two_versions
    with pytest.raises(Conflict, match="no finished evaluation of v1") as caught:
        alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)
    assert caught.value.status == 409


def test_promoting_with_a_failing_evaluation_names_the_metric_and_threshold(
    team, two_versions, evaluate
):
    v1, _ = two_versions
    evaluate(v1, {"val_loss": 2.31})
    evaluate(v1, {"val_loss": 1.0}, finished=False)  # still running: not what counts

    with pytest.raises(Conflict) as caught:
        alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)

    assert "val_loss 2.31 > 2 (threshold val_loss <= 2)" in str(caught.value)
    assert not PromotionRequest.objects.exists()


def test_a_metric_the_evaluation_lacks_fails_the_gate(team, two_versions, evaluate):
    v1, _ = two_versions
    model_update(
        model=v1.model,
        actor=team.owner,
        promotion_thresholds=[{"metric": "recognition", "op": ">=", "value": 0.9}],
    )
    v1.model.refresh_from_db()
    evaluate(v1, {"val_loss": 1.0})
    assert evaluation_gate(version=v1) == [
        f"recognition was not measured by evaluation "
        f"{v1.evaluations.get().pk} (threshold recognition >= 0.9)"
    ]


def test_four_eyes_promotion(team, two_versions, evaluate, audit_actions):
    v1, _ = two_versions
    evaluation = evaluate(v1, {"val_loss": 1.9})

    request = alias_set(
        model=v1.model, actor=team.engineer, alias="production", version=v1, reason="better"
    )

    assert isinstance(request, PromotionRequest)
    assert request.state == PromotionState.PENDING and request.evaluation == evaluation
    assert not ModelAlias.objects.filter(name="production").exists()  # not before approval

    approved = promotion_approve(request=request, actor=team.compliance, reason="checked")

    assert approved.state == PromotionState.APPROVED and approved.decided_by == team.compliance
    alias = ModelAlias.objects.get(name="production")
    assert alias.version == v1 and alias.moved_by == team.compliance
    assert audit_actions(team.project, "promotion_request.") == [
        "promotion_request.opened",
        "promotion_request.approved",
    ]
    moved = AuditEvent.objects.get(action="model_alias.moved")
    assert moved.payload["promotion_request"] == request.pk


def test_the_requester_can_never_approve_their_own_request(team, two_versions, evaluate):
    v1, _ = two_versions
    evaluate(v1, {"val_loss": 1.9})
    request = alias_set(model=v1.model, actor=team.owner, alias="production", version=v1)

    with pytest.raises(NotAllowed) as caught:
        promotion_approve(request=request, actor=team.owner, reason="mine")

    assert caught.value.status == 403
    assert str(caught.value) == (
        "you requested this promotion; a second owner or compliance officer must approve it"
    )
    request.refresh_from_db()
    assert request.state == PromotionState.PENDING


@pytest.mark.parametrize("who", ["engineer", "viewer", "admin"])
def test_only_owners_and_compliance_members_decide(team, two_versions, evaluate, who):
    v1, _ = two_versions
    evaluate(v1, {"val_loss": 1.9})
    request = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)

    with pytest.raises(NotAllowed, match="owner or compliance role"):
        promotion_approve(request=request, actor=getattr(team, who), reason="ok")
    with pytest.raises(NotAllowed, match="owner or compliance role"):
        promotion_reject(request=request, actor=getattr(team, who), reason="no")


def test_a_decision_needs_a_reason(team, two_versions, evaluate):
    v1, _ = two_versions
    evaluate(v1, {"val_loss": 1.9})
    request = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)

    with pytest.raises(InvalidRequest, match="needs a reason"):
        promotion_approve(request=request, actor=team.owner, reason="  ")


def test_approval_checks_the_gate_again(team, two_versions, evaluate):
    v1, _ = two_versions
    evaluate(v1, {"val_loss": 1.9})
    request = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)
    model_update(
        model=v1.model,
        actor=team.owner,
        promotion_thresholds=[{"metric": "val_loss", "op": "<", "value": 1.5}],
    )

    with pytest.raises(Conflict, match="val_loss 1.9 >= 1.5"):
        promotion_approve(request=request, actor=team.compliance, reason="ok")
    request.refresh_from_db()
    assert request.state == PromotionState.PENDING


def test_a_decided_request_cannot_be_decided_again(team, two_versions, evaluate):
    v1, _ = two_versions
    evaluate(v1, {"val_loss": 1.9})
    request = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)
    promotion_reject(request=request, actor=team.owner, reason="not yet")

    with pytest.raises(Conflict, match="already rejected"):
        promotion_approve(request=request, actor=team.compliance, reason="ok")
    assert not ModelAlias.objects.filter(name="production").exists()


def test_a_new_request_withdraws_the_pending_one(team, two_versions, evaluate, audit_actions):
    v1, v2 = two_versions
    evaluate(v1, {"val_loss": 1.9})
    evaluate(v2, {"val_loss": 1.8})
    first = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)

    second = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v2)

    first.refresh_from_db()
    assert first.state == PromotionState.WITHDRAWN
    assert second.state == PromotionState.PENDING
    assert "promotion_request.withdrawn" in audit_actions(team.project)


def test_the_requester_withdraws_and_nobody_else(team, two_versions, evaluate):
    v1, _ = two_versions
    evaluate(v1, {"val_loss": 1.9})
    request = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)

    with pytest.raises(NotAllowed):
        promotion_withdraw(request=request, actor=team.owner)
    assert promotion_withdraw(request=request, actor=team.engineer).state == "withdrawn"


def test_rollback_goes_back_to_the_previous_version_and_still_needs_approval(
    team, two_versions, evaluate
):
    v1, v2 = two_versions
    evaluate(v1, {"val_loss": 1.9})
    evaluate(v2, {"val_loss": 1.8})
    for version in (v1, v2):
        request = alias_set(
            model=v1.model, actor=team.engineer, alias="production", version=version
        )
        promotion_approve(request=request, actor=team.owner, reason="ok")

    rollback = alias_rollback(model=v1.model, actor=team.engineer, alias="production")

    assert isinstance(rollback, PromotionRequest)
    assert rollback.is_rollback and rollback.version == v1 and rollback.from_version == v2
    promotion_approve(request=rollback, actor=team.compliance, reason="v2 misbehaves")
    alias = ModelAlias.objects.get(name="production")
    assert (alias.version, alias.previous_version) == (v1, v2)
    moved = AuditEvent.objects.filter(action="model_alias.moved").order_by("-seq").first()
    assert moved.payload["rollback"] is True
    assert (moved.payload["previous_version"], moved.payload["version"]) == (2, 1)


def test_rollback_of_an_unprotected_alias_moves_at_once(team, two_versions):
    v1, v2 = two_versions
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v2)

    alias = alias_rollback(model=v1.model, actor=team.engineer, alias="candidate")

    assert alias.version == v1
    with pytest.raises(NotFound):
        alias_rollback(model=v1.model, actor=team.engineer, alias="nothing")


def test_a_version_an_alias_points_at_cannot_be_deleted(team, two_versions):
    v1, _ = two_versions
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)

    with pytest.raises(Conflict, match="@candidate points at|is what @candidate") as caught:
        version_delete(version=v1, actor=team.engineer)
    assert caught.value.status == 409
    v1.refresh_from_db()
    assert v1.state == VersionState.READY


def test_delete_leaves_a_tombstone_and_removes_the_objects(team, two_versions, evaluate):
    v1, v2 = two_versions
    evaluate(v2, {"val_loss": 1.0})
    pending = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v2)

    deleted = version_delete(version=v2, actor=team.engineer)

    assert deleted.state == VersionState.DELETED and deleted.deleted_at is not None
    assert list(object_store().list(v2.object_prefix)) == []
    assert list(object_store().list(v1.object_prefix)) != []
    pending.refresh_from_db()
    assert pending.state == PromotionState.WITHDRAWN
    event = AuditEvent.objects.get(action="model_version.deleted")
    assert event.payload["number"] == 2
    with pytest.raises(Conflict, match="v2 is deleted"):
        alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=deleted)


def test_alias_delete(team, two_versions, evaluate):
    v1, _ = two_versions
    alias_set(model=v1.model, actor=team.engineer, alias="candidate", version=v1)
    evaluate(v1, {"val_loss": 1.0})
    request = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)
    promotion_approve(request=request, actor=team.owner, reason="ok")

    alias_delete(model=v1.model, actor=team.engineer, alias="candidate")
    with pytest.raises(NotAllowed):
        alias_delete(model=v1.model, actor=team.engineer, alias="production")
    alias_delete(model=v1.model, actor=team.compliance, alias="production")

    assert not ModelAlias.objects.exists()
    assert AuditEvent.objects.filter(action="model_alias.deleted").count() == 2


@pytest.mark.parametrize(
    "thresholds, field",
    [
        ("val_loss <= 2", "promotion_thresholds"),
        ([{"metric": "val_loss", "op": "=", "value": 2}], "promotion_thresholds.0.op"),
        ([{"metric": "val_loss", "op": "<", "value": True}], "promotion_thresholds.0.value"),
        (
            [{"metric": "val_loss", "op": "<", "value": float("inf")}],
            "promotion_thresholds.0.value",
        ),
        ([{"metric": "", "op": "<", "value": 1}], "promotion_thresholds.0.metric"),
        ([{"metric": "a", "op": "<"}], "promotion_thresholds.0"),
    ],
)
def test_thresholds_are_validated(team, two_versions, thresholds, field):
    v1, _ = two_versions
    with pytest.raises(InvalidRequest) as caught:
        model_update(model=v1.model, actor=team.owner, promotion_thresholds=thresholds)
    assert field in caught.value.fields


def test_protected_aliases_are_a_project_setting(team, two_versions):
    v1, _ = two_versions
    registry_settings_update(
        project=team.project, actor=team.owner, protected_aliases=["staging", "staging"]
    )

    moved = alias_set(model=v1.model, actor=team.engineer, alias="production", version=v1)
    assert isinstance(moved, ModelAlias)  # no longer protected
    with pytest.raises(Conflict, match="no finished evaluation"):
        alias_set(model=v1.model, actor=team.engineer, alias="staging", version=v1)
    with pytest.raises(InvalidRequest):
        registry_settings_update(project=team.project, actor=team.owner, protected_aliases=["V"])
    event = AuditEvent.objects.get(action="registry_settings.updated")
    assert event.payload["protected_aliases"] == {"before": ["production"], "after": ["staging"]}


def test_version_update_is_audited(team, two_versions):
    v1, _ = two_versions
    version_update(version=v1, actor=team.engineer, intended_use="Shakespeare pastiche")
    v1.refresh_from_db()
    assert v1.intended_use == "Shakespeare pastiche"
    event = AuditEvent.objects.get(action="model_version.updated")
    assert event.payload["after"] == {"intended_use": "Shakespeare pastiche"}
