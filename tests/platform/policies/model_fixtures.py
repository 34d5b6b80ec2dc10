"""Fixtures of the model and serving gate tests (imported by test_gates_registry.py and
test_gates_serving.py, like tests/platform/serving/deployment_fixtures.py: each fixture's
function is named `<fixture>_fixture`, so the import does not shadow the test's argument).

`set_policy(rule={param: value}, ...)`: a new version of the project's policy with those
rules enabled (the owner edits it, as on the policy page).
`evaluated(version, {"val_loss": 1.2})`: a finished evaluation of the version.
`waive(version, rule, expires_in=timedelta(days=1))`: a compliance officer's waiver.
`policy_events(project)`: the project's policy.* audit events, oldest first.
"""

from __future__ import annotations

from datetime import timedelta

import pytest


@pytest.fixture(name="set_policy")
def set_policy_fixture(team):
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    def set_policy(*, project=None, **rules):
        project = project or team.project
        changes = {key: {"enabled": True, **params} for key, params in rules.items()}
        return policy_update(
            project=project,
            actor=team.owner,
            changes=changes,
            reason="tests",
            base_version=current_number(project),
        )

    return set_policy


@pytest.fixture(name="evaluated")
def evaluated_fixture(team):
    from django.utils import timezone

    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelEvaluation

    def make(version, metrics: dict):
        job = Job.objects.create(
            project=version.model.project,
            kind="evaluate",
            state="succeeded",
            params={"model_version_id": version.pk},
            created_by=team.engineer,
        )
        return ModelEvaluation.objects.create(
            version=version, job=job, metrics=metrics, finished_at=timezone.now()
        )

    return make


@pytest.fixture(name="waive")
def waive_fixture(team):
    from django.utils import timezone

    from controlplane.policies.models import SubjectType, Waiver

    def make(version, rule: str, *, expires_in: timedelta = timedelta(days=1)):
        return Waiver.objects.create(
            project=version.model.project,
            rule=rule,
            subject_type=SubjectType.MODEL_VERSION,
            subject_id=version.pk,
            subject_label=f"{version.model.name} v{version.number}",
            reason="accepted risk for the pilot",
            expires_at=timezone.now() + expires_in,
            granted_by=team.compliance,
        )

    return make


@pytest.fixture(name="policy_events")
def policy_events_fixture():
    from controlplane.audit.models import AuditEvent

    def events(project) -> list:
        return list(
            AuditEvent.objects.filter(project_id=project.pk, action__startswith="policy.")
            .exclude(action="policy.updated")
            .order_by("seq")
        )

    return events
