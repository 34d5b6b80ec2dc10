"""Waivers at the gates: granted, a refused subject passes; expired or revoked, it no
longer does; every grant and revocation is audited on the subject's timeline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.platform.policies.compliance_fixtures import dataset_version, set_policy, waiver

pytestmark = pytest.mark.django_db

MIT_ONLY = {"licences": {"enabled": True, "allowed_licences": ["MIT"]}}


def ready_decision(project, version):
    from controlplane.policies.facts import dataset_facts
    from controlplane.policies.gates import evaluate
    from controlplane.policies.rules import Gate

    return evaluate(project, Gate.DATASET_READY, dataset_facts([version.pk])[version.pk])


def test_a_waiver_lets_the_refused_subject_pass_the_gate(team):
    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    assert not ready_decision(team.project, gpl).allowed

    granted = waiver(team.project, team.compliance, "dataset_version", gpl.pk, "licences")

    decision = ready_decision(team.project, gpl)
    assert decision.allowed and [f.waiver_id for f in decision.waived] == [granted.pk]
    assert decision.as_dict()["waived"][0]["waiver"] == granted.pk


def test_a_waiver_covers_one_rule_on_one_subject(team):
    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only", region="us-east-1")
    other = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(
        team.project,
        team.compliance,
        {**MIT_ONLY, "residency": {"enabled": True, "allowed_regions": ["local"]}},
    )
    waiver(team.project, team.compliance, "dataset_version", gpl.pk, "licences")

    decision = ready_decision(team.project, gpl)
    assert [f.rule.value for f in decision.denials] == ["residency"]
    assert not ready_decision(team.project, other).allowed


def test_an_expired_waiver_no_longer_lets_anything_pass(team):
    from controlplane.policies.models import Waiver
    from controlplane.policies.selectors import waivers_for_subject

    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    granted = waiver(team.project, team.compliance, "dataset_version", gpl.pk, "licences")
    assert list(waivers_for_subject("dataset_version", gpl.pk)) == [granted]

    Waiver.objects.filter(pk=granted.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert not ready_decision(team.project, gpl).allowed
    assert list(waivers_for_subject("dataset_version", gpl.pk)) == []


def test_a_revoked_waiver_no_longer_lets_anything_pass_and_both_are_audited(team):
    from controlplane.audit.models import AuditEvent
    from controlplane.policies.waivers import waiver_revoke

    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    granted = waiver(team.project, team.compliance, "dataset_version", gpl.pk, "licences")

    waiver_revoke(waiver=granted, actor=team.compliance, reason="licence review failed")

    assert not ready_decision(team.project, gpl).allowed
    events = AuditEvent.objects.filter(
        project_id=team.project.pk, artifact_type="datasetversion", artifact_id=str(gpl.pk)
    ).order_by("seq")
    assert [(e.action, e.actor_id) for e in events] == [
        ("waiver.granted", team.compliance.pk),
        ("waiver.revoked", team.compliance.pk),
    ]
    assert events[0].payload["rule"] == "licences" and events[0].payload["expires_at"]
    assert events[1].payload["reason"] == "licence review failed"


def test_a_waiver_in_another_project_does_not_apply_here(team):
    """Waivers are looked up by the deciding project: ids of two projects' subjects can
    never meet, but a waiver row must not be borrowed across projects either."""
    from controlplane.policies.models import Waiver

    gpl = dataset_version(team.project, team.owner, licence="GPL-3.0-only")
    set_policy(team.project, team.compliance, MIT_ONLY)
    Waiver.objects.create(
        project=team.other_project,
        rule="licences",
        subject_type="dataset_version",
        subject_id=gpl.pk,
        subject_label="forged",
        reason="x",
        expires_at=timezone.now() + timedelta(days=1),
        granted_by=team.outsider,
    )
    assert not ready_decision(team.project, gpl).allowed


def test_granting_needs_the_compliance_role_and_a_subject_of_the_project(team):
    from controlplane.policies.errors import NotAllowed, NotFound

    mine = dataset_version(team.project, team.owner)
    theirs = dataset_version(team.other_project, team.outsider)
    with pytest.raises(NotAllowed):
        waiver(team.project, team.owner, "dataset_version", mine.pk, "licences")
    with pytest.raises(NotFound):
        waiver(team.project, team.compliance, "dataset_version", theirs.pk, "licences")


def test_an_admin_of_the_organisation_places_and_releases_holds_a_member_does_not(team):
    """An organisation-wide erasure places its holds in every project as its reviewer, an
    admin of the organisation who may hold no role in that project."""
    from controlplane.orgs.models import OrgMembership, OrgRole
    from controlplane.policies.errors import NotAllowed
    from controlplane.policies.waivers import hold_place, hold_release

    version = dataset_version(team.project, team.owner)
    with pytest.raises(NotAllowed):
        hold_place(
            project=team.project, actor=team.viewer, dataset_version_id=version.pk, reference="R1"
        )
    OrgMembership.objects.filter(organisation=team.project.organisation, user=team.viewer).update(
        role=OrgRole.ADMIN
    )

    hold = hold_place(
        project=team.project, actor=team.viewer, dataset_version_id=version.pk, reference="R1"
    )

    assert hold_release(hold=hold, actor=team.viewer).released_by == team.viewer
