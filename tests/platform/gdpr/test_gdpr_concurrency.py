"""Two reviewers decide one request at the same moment: one wins, the other gets a 409."""

from __future__ import annotations

import pytest

from tests.threads import in_threads

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("second", ["approve", "reject"])
def test_two_decisions_at_once_one_wins(team, file_request, second, monkeypatch):
    from controlplane.audit.models import AuditEvent
    from controlplane.gdpr import services
    from controlplane.gdpr.errors import Conflict
    from controlplane.gdpr.models import RequestState, SubjectRequest
    from controlplane.gdpr.services import request_approve, request_reject

    # The decision race alone: the erasure an approval starts is test_gdpr_erasure's.
    monkeypatch.setattr(services, "on_approved", [])

    request = file_request()

    results = in_threads(
        lambda: request_approve(request=request, actor=team.owner, reason="verified"),
        lambda: (request_approve if second == "approve" else request_reject)(
            request=request, actor=team.compliance, reason="checked too"
        ),
    )

    winners = [r for r in results if isinstance(r, SubjectRequest)]
    losers = [r for r in results if isinstance(r, Conflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0].status == 409
    request.refresh_from_db()
    assert request.state == winners[0].state
    assert request.state in (RequestState.APPROVED, RequestState.REJECTED)
    decisions = AuditEvent.objects.filter(
        action__in=["subject_request.approved", "subject_request.rejected"]
    )
    assert decisions.count() == 1
