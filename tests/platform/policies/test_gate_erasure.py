"""Rule 4 (pending erasure): no training on a version while an approved erasure of it, or
of any version it derives from, is unfinished."""

import pytest

pytestmark = pytest.mark.django_db


def _hold(team, version, *, released: bool = False):
    from django.utils import timezone

    from controlplane.policies.models import ErasureHold

    return ErasureHold.objects.create(
        project=team.project,
        dataset_version=version,
        reference="ERASE-42",
        reason="a data subject asked to be forgotten",
        placed_by=team.compliance,
        released_by=team.compliance if released else None,
        released_at=timezone.now() if released else None,
    )


def test_a_hold_on_an_ancestor_refuses_training_on_the_derived_version(
    team, set_policy, make_dataset, uploaded, derived, pretrain, decisions
):
    from controlplane.policies.errors import PolicyDenied

    raw = uploaded(make_dataset())
    tokens = derived(derived(raw))  # two pipeline runs away from the held upload
    set_policy(pending_erasure={"enabled": True})
    _hold(team, raw)

    with pytest.raises(PolicyDenied) as refused:
        pretrain(tokens)

    (denial,) = refused.value.decision.denials
    assert denial.rule == "pending_erasure"
    assert denial.subject.id == tokens.pk
    assert denial.reason == (
        f"training on plays v{tokens.number}: erasure ERASE-42 on plays v1 is approved but "
        "not finished"
    )
    assert "wait until the erasure has finished" in denial.fix
    (event,) = decisions("policy.denied", tokens)
    assert event.payload["rules"] == ["pending_erasure"]


def test_a_released_hold_no_longer_refuses(
    team, set_policy, make_dataset, uploaded, derived, pretrain
):
    raw = uploaded(make_dataset())
    tokens = derived(raw)
    set_policy(pending_erasure={"enabled": True})
    _hold(team, raw, released=True)

    assert pretrain(tokens).kind == "pretrain"


def test_a_hold_on_another_branch_does_not_refuse(
    team, set_policy, make_dataset, uploaded, derived, pretrain
):
    dataset = make_dataset()
    first, second = uploaded(dataset), uploaded(dataset)
    tokens = derived(second)
    set_policy(pending_erasure={"enabled": True})
    _hold(team, first)

    assert pretrain(tokens).kind == "pretrain"
