"""Token creation and revocation under real concurrency, against PostgreSQL: the per-user
cap holds and no token minted during a revocation survives its revoked parent."""

import threading

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def _in_threads(count, work):
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(index):
        try:
            barrier.wait()
            results[index] = work(index)
        except Exception as error:  # noqa: BLE001 - the outcome is what the test checks
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_concurrent_creates_never_exceed_the_cap(make_user, settings):
    from controlplane.accounts.models import ApiToken
    from controlplane.accounts.services import TokenConflict, api_token_create

    settings.API_TOKEN_MAX_PER_USER = 3
    user = make_user()
    results = _in_threads(8, lambda i: api_token_create(user=user, name=f"t{i}"))
    assert sum(isinstance(r, tuple) for r in results) == 3
    assert sum(isinstance(r, TokenConflict) for r in results) == 5
    assert ApiToken.objects.filter(user=user).count() == 3


def test_no_token_minted_during_a_revocation_outlives_it(make_user):
    from controlplane.accounts.models import ApiToken
    from controlplane.accounts.services import TokenForbidden, api_token_create, api_token_revoke

    user = make_user()
    scopes = ["api:read", "tokens:write"]
    root, _ = api_token_create(user=user, name="root", scopes=scopes)
    child, _ = api_token_create(user=user, name="child", scopes=scopes, minted_by=root)

    def work(index):
        if index == 0:
            return api_token_revoke(token=ApiToken.objects.get(pk=root.pk), actor=user)
        parent = ApiToken.objects.get(pk=child.pk)
        return api_token_create(user=user, name=f"g{index}", scopes=scopes, minted_by=parent)

    results = _in_threads(6, work)
    assert all(isinstance(r, (list, tuple, TokenForbidden)) for r in results), results
    assert not ApiToken.objects.active().filter(user=user).exists()
