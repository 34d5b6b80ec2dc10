"""Fixtures of the policy API and page tests: a ready dataset version, and a violation,
a waiver and an erasure hold on it, each made through its service.

Imported by the test files (`from tests.platform.policies.page_fixtures import ...`; each
fixture's function is named `<fixture>_fixture` so the import does not shadow the test's
argument) rather than kept in a conftest.py, which the other policy tests do not need.
"""

from __future__ import annotations

from datetime import timedelta

import pytest


def edit(project, actor, changes: dict, *, base: int | None = None, reason: str = "tests"):
    """A policy edit through the service, on the version in force unless `base` is given."""
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    return policy_update(
        project=project,
        actor=actor,
        changes=changes,
        reason=reason,
        base_version=current_number(project) if base is None else base,
    )


@pytest.fixture(name="ready_version")
def ready_version_fixture(team, make_ready_version):
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project, actor=team.owner, name="Plays", slug="plays", kind="text"
    )
    return make_ready_version(dataset, team.owner, {"plays.txt": b"to be\n"})


@pytest.fixture(name="violation")
def violation_fixture(team, ready_version):
    from controlplane.policies.decide import Finding
    from controlplane.policies.models import SubjectType
    from controlplane.policies.rules import RuleKey
    from controlplane.policies.selectors import violations_of
    from controlplane.policies.subjects import SubjectRef
    from controlplane.policies.violations import record_findings

    finding = Finding(
        rule=RuleKey.LICENCES,
        subject=SubjectRef(SubjectType.DATASET_VERSION, ready_version.pk, "plays v1"),
        reason="licence GPL-3.0-only is not among the allowed licences",
        fix="use data under an allowed licence, or ask for a waiver",
    )
    record_findings(project=team.project, findings=[finding], policy_label="project v1")
    return violations_of(team.project).get()


@pytest.fixture(name="waiver")
def waiver_fixture(team, ready_version):
    from django.utils import timezone

    from controlplane.policies.waivers import waiver_grant

    return waiver_grant(
        project=team.project,
        actor=team.compliance,
        rule="data_preparation",
        subject_type="dataset_version",
        subject_id=ready_version.pk,
        reason="cleaned by hand, report follows",
        expires_at=timezone.now() + timedelta(days=30),
    )


@pytest.fixture(name="hold")
def hold_fixture(team, ready_version):
    from controlplane.policies.waivers import hold_place

    return hold_place(
        project=team.project,
        actor=team.owner,
        dataset_version_id=ready_version.pk,
        reference="GDPR-2026-17",
        reason="data subject asked for erasure",
    )
