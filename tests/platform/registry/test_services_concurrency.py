"""The registry under concurrency: real threads, real PostgreSQL transactions."""

from __future__ import annotations

import pytest

from tests.threads import in_threads

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_registrations_at_once_get_distinct_numbers(team, make_model_job):
    from controlplane.registry.models import ModelVersion, RegisteredModel
    from controlplane.registry.services import version_register

    jobs = [make_model_job(), make_model_job(), make_model_job()]

    results = in_threads(
        *(
            lambda job=job: version_register(
                project=team.project, actor=team.engineer, job=job, model_name="gpt"
            )
            for job in jobs
        )
    )

    assert all(isinstance(r, ModelVersion) for r in results), results
    assert sorted(r.number for r in results) == [1, 2, 3]
    model = RegisteredModel.objects.get()
    assert model.last_version_number == 3


def test_two_approvals_of_one_request_one_wins(team, ready_version, evaluate):
    from controlplane.audit.models import AuditEvent
    from controlplane.registry.errors import Conflict
    from controlplane.registry.models import ModelAlias, PromotionRequest
    from controlplane.registry.services import alias_set, promotion_approve

    version = ready_version("gpt")
    evaluate(version, {"val_loss": 1.0})
    request = alias_set(
        model=version.model, actor=team.engineer, alias="production", version=version
    )

    results = in_threads(
        lambda: promotion_approve(request=request, actor=team.owner, reason="ok"),
        lambda: promotion_approve(request=request, actor=team.compliance, reason="fine"),
    )

    winners = [r for r in results if isinstance(r, PromotionRequest)]
    losers = [r for r in results if isinstance(r, Conflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0].status == 409
    assert ModelAlias.objects.get(name="production").version == version
    assert AuditEvent.objects.filter(action="model_alias.moved").count() == 1
    assert AuditEvent.objects.filter(action="promotion_request.approved").count() == 1
