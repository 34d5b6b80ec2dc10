from __future__ import annotations

from datetime import datetime, timedelta

import pytest


class Clock:
    """The lockout module's notion of now, moved by hand."""

    def __init__(self, start: datetime):
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta) -> None:
        self.current += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    import types

    from django.utils import timezone

    import controlplane.accounts.lockout as lockout

    fake = Clock(timezone.now())
    monkeypatch.setattr(lockout, "timezone", types.SimpleNamespace(now=fake.now))
    return fake


@pytest.fixture
def lockout_settings(settings):
    settings.AUTH_LOCKOUT_ACCOUNT_FAILURES = 5
    settings.AUTH_LOCKOUT_ADDRESS_FAILURES = 20
    settings.AUTH_LOCKOUT_WINDOW_SECONDS = 900
    settings.AUTH_LOCKOUT_SECONDS = 60
    settings.AUTH_LOCKOUT_MAX_SECONDS = 3600
    settings.TRUSTED_PROXY_COUNT = 0
    return settings
