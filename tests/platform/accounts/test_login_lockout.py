"""Failed passwords lock the account and the client address out, with backoff, on the
login page and the admin's; the right password is refused until the lockout ends."""

import pytest

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-1"


def _login(client, username, password, address="10.0.0.1", path="/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def _logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_right_password_after_the_threshold_is_refused_until_the_backoff_passes(
    make_user, client, clock, lockout_settings
):
    """The reported fault: 30 wrong passwords in 15 s, then the right one logged in."""
    make_user("alice")
    for _ in range(30):
        _login(client, "alice", "wrong")
    refused = _login(client, "alice", PASSWORD)
    assert refused.status_code == 429 and not _logged_in(client)
    page = refused.content.decode()
    assert "Too many failed attempts; try again in 1 minute" in page
    assert int(refused["Retry-After"]) <= 60
    clock.advance(seconds=59)
    assert _login(client, "alice", PASSWORD).status_code == 429
    clock.advance(seconds=2)
    assert _login(client, "alice", PASSWORD).status_code == 302 and _logged_in(client)


def test_threshold_failures_lock_and_fewer_do_not(make_user, client, clock, lockout_settings):
    make_user("alice")
    for _ in range(4):
        assert _login(client, "alice", "wrong").status_code == 200
    assert _login(client, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(5):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", PASSWORD).status_code == 429


def test_each_further_lockout_lasts_twice_as_long(make_user, client, clock, lockout_settings):
    from controlplane.accounts.models import AuthFailureCounter

    make_user("alice")
    durations = []
    for _ in range(3):
        for _ in range(5):
            _login(client, "alice", "wrong")
        counter = AuthFailureCounter.objects.get(kind="account")
        durations.append((counter.locked_until - clock.now()).total_seconds())
        clock.advance(seconds=durations[-1] + 1)
    assert durations == [60, 120, 240]
    lockout_settings.AUTH_LOCKOUT_MAX_SECONDS = 300
    for _ in range(5):
        _login(client, "alice", "wrong")
    counter = AuthFailureCounter.objects.get(kind="account")
    assert (counter.locked_until - clock.now()).total_seconds() == 300
    assert "try again in 5 minutes" in _login(client, "alice", PASSWORD).content.decode()


def test_account_lockout_holds_from_every_address(make_user, client, clock, lockout_settings):
    make_user("alice")
    for i in range(5):
        _login(client, "alice", "wrong", address=f"10.0.1.{i}")
    assert _login(client, "Alice", PASSWORD, address="10.9.9.9").status_code == 429


def test_one_address_guessing_many_accounts_is_locked_out(
    make_user, client, clock, lockout_settings
):
    make_user("bob")
    for i in range(20):
        _login(client, f"nobody{i}", "wrong", address="10.0.0.7")
    assert _login(client, "bob", PASSWORD, address="10.0.0.7").status_code == 429
    assert _login(client, "bob", PASSWORD, address="10.0.0.8").status_code == 302


def test_failures_outside_the_window_are_forgotten(make_user, client, clock, lockout_settings):
    make_user("alice")
    for _ in range(4):
        _login(client, "alice", "wrong")
    clock.advance(seconds=901)
    for _ in range(4):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", PASSWORD).status_code == 302


def test_success_forgives_the_account_but_not_the_address(
    make_user, client, clock, lockout_settings
):
    from controlplane.accounts.models import AuthFailureCounter

    make_user("alice")
    for _ in range(4):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", PASSWORD).status_code == 302
    assert not AuthFailureCounter.objects.filter(kind="account").exists()
    assert AuthFailureCounter.objects.get(kind="address").failures == 4


def test_admin_login_is_locked_out_too(make_user, client, clock, lockout_settings):
    make_user("root", staff=True)
    for _ in range(5):
        _login(client, "root", "wrong", path="/admin/login/")
    response = _login(client, "root", PASSWORD, path="/admin/login/")
    assert not _logged_in(client)
    assert "too many failed attempts; try again in 1 minute" in response.content.decode()
    # One counter for both doors: the login page refuses the account as well.
    assert _login(client, "root", PASSWORD).status_code == 429


def test_failures_and_lockouts_are_audited_without_personal_data(
    make_user, client, clock, lockout_settings
):
    from controlplane.audit.chain import hash_subject
    from controlplane.audit.models import AuditEvent
    from controlplane.audit.services import audit_verify

    make_user("alice")
    for _ in range(5):
        _login(client, "alice", "wrong", address="192.0.2.44")
    _login(client, "alice", PASSWORD, address="192.0.2.44")  # refused: not audited again
    events = list(AuditEvent.objects.filter(project_id=None).order_by("seq"))
    actions = [e.action for e in events]
    assert actions.count("auth.login_failed") == 5 and actions.count("auth.locked_out") == 1
    failed = next(e for e in events if e.action == "auth.login_failed")
    assert failed.payload["subject"] == hash_subject("alice")
    assert failed.payload["via"] == "login"
    for event in events:
        text = str(event.payload) + event.artifact_id
        assert "alice" not in text and "192.0.2.44" not in text
    assert all(v.ok for v in audit_verify())


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(
    make_user, client, clock, lockout_settings
):
    make_user("bob")
    for i in range(20):
        # A client that makes up a new X-Forwarded-For each time gains nothing...
        client.post(
            "/login/",
            {"username": f"n{i}", "password": "x"},
            REMOTE_ADDR="10.0.0.5",
            HTTP_X_FORWARDED_FOR=f"203.0.113.{i}",
        )
    assert _login(client, "bob", PASSWORD, address="10.0.0.5").status_code == 429
    # ...while behind one trusted proxy the address the proxy appended is the client's.
    lockout_settings.TRUSTED_PROXY_COUNT = 1
    response = client.post(
        "/login/",
        {"username": "bob", "password": PASSWORD},
        REMOTE_ADDR="10.0.0.5",
        HTTP_X_FORWARDED_FOR="spoofed, 198.51.100.1",
    )
    assert response.status_code == 302


def test_stale_counters_are_dropped_but_a_lockout_in_force_is_kept(
    make_user, client, clock, lockout_settings
):
    from controlplane.accounts.models import AuthFailureCounter

    lockout_settings.AUTH_LOCKOUT_MAX_SECONDS = 3 * 24 * 3600
    lockout_settings.AUTH_LOCKOUT_SECONDS = 3 * 24 * 3600
    for _ in range(5):
        _login(client, "alice", "wrong", address="10.0.0.1")  # locks alice for 3 days
    _login(client, "bob", "wrong", address="10.0.0.2")
    clock.advance(days=2)
    _login(client, "carol", "wrong", address="10.0.0.3")  # a new key: prunes the stale ones
    kept = set(AuthFailureCounter.objects.values_list("kind", "failures", "lockouts"))
    assert ("account", 0, 1) in kept  # alice, still locked
    assert ("account", 1, 0) in kept  # carol, new
    assert AuthFailureCounter.objects.count() == 3  # alice, carol and 10.0.0.3; bob's gone
