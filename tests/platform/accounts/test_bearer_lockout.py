"""Failed bearer tokens lock the client address out: 429 in the JSON error shape with
Retry-After, instead of an endless stream of unthrottled 401s."""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def _get(raw, address="10.1.0.1"):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client.get("/api/v1/projects/", REMOTE_ADDR=address)


def test_bad_tokens_lock_the_address_with_a_429_and_retry_after(db, clock, lockout_settings):
    """The reported fault: 401s were never throttled."""
    answers = [_get(f"cp_guess{i}").status_code for i in range(25)]
    assert answers[:19] == [401] * 19 and set(answers[19:]) == {429}
    response = _get("cp_guess-again")
    error = response.json()["error"]
    assert response.status_code == 429 and error["code"] == "throttled"
    assert "too many failed attempts; try again in 1 minute" in error["message"]
    assert 0 < int(response["Retry-After"]) <= 60
    assert _get("cp_other", address="10.1.0.2").status_code == 401
    clock.advance(seconds=61)
    assert _get("cp_after").status_code == 401


def test_a_valid_token_still_works_from_a_locked_address(make_user, api, clock, lockout_settings):
    from controlplane.accounts.services import api_token_create

    for i in range(20):
        _get(f"cp_guess{i}")
    assert _get("cp_guess").status_code == 429
    _token, raw = api_token_create(user=make_user(), name="ok")
    assert _get(raw).status_code == 200


def test_revoked_and_expired_tokens_count_as_failures(make_user, clock, lockout_settings):
    from controlplane.accounts.services import api_token_create, api_token_revoke

    lockout_settings.AUTH_LOCKOUT_ADDRESS_FAILURES = 3
    user = make_user()
    token, raw = api_token_create(user=user, name="old")
    api_token_revoke(token=token, actor=user)
    assert [_get(raw).status_code for _ in range(4)] == [401, 401, 429, 429]


def test_a_bearer_lockout_is_audited_once_and_single_failures_are_not(db, clock, lockout_settings):
    from controlplane.audit.models import AuditEvent

    for i in range(30):
        _get(f"cp_guess{i}", address="192.0.2.9")
    events = AuditEvent.objects.filter(project_id=None)
    assert [e.action for e in events] == ["auth.locked_out"]
    assert events[0].payload["via"] == "bearer" and "192.0.2.9" not in str(events[0].payload)
