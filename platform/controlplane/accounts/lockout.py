"""Lockout with backoff after failed authentication: passwords (the login page and the
admin's) per account and per client address, bearer tokens per client address.

Why not django-axes: it hooks `authenticate()`, which a bearer token never goes through,
so tokens would need a second mechanism anyway; and it stores usernames and addresses in
clear. One small mechanism serves the three paths and stores only hashes.

The counters live in the database (`AuthFailureCounter`), written only on a failure, so a
successful request costs one indexed read at most (a login) or nothing (a valid token).
The database, not the cache, is the store of record because the embedded default's cache
is per process: counters there would multiply the threshold by the number of workers.

Invariants:
- A locked key refuses even the right password until `locked_until`: otherwise the
  lockout would only slow an attacker down by the cost of one request.
- Failures are counted in a window (AUTH_LOCKOUT_WINDOW_SECONDS); reaching the threshold
  locks the key for AUTH_LOCKOUT_SECONDS * 2**(lockouts so far), at most
  AUTH_LOCKOUT_MAX_SECONDS, and opens a new window.
- A successful login clears its account's counter, never its address's: one valid account
  must not buy an attacker fresh guesses at every other one.
- Audit events hold hashes only (`hash_subject`), and a failed bearer token is audited
  only when it locks an address: a flood of bad tokens must not queue on the audit lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from controlplane.accounts.models import AuthFailureCounter
from controlplane.audit.chain import hash_subject
from controlplane.audit.services import audit_append

Kind = AuthFailureCounter.Kind

# Counters untouched this long are deleted (a lockout is long over by then); this also
# resets the backoff of a key that has behaved for a day.
STALE_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Lockout:
    until: datetime

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil((self.until - timezone.now()).total_seconds()))

    @property
    def message(self) -> str:
        minutes = max(1, math.ceil(self.retry_after_seconds / 60))
        unit = "minute" if minutes == 1 else "minutes"
        return f"too many failed attempts; try again in {minutes} {unit}"


def client_address(request: HttpRequest) -> str:
    """The client's IP: REMOTE_ADDR, or the entry our own proxies added to X-Forwarded-For."""
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        # Each trusted proxy appends the address it received from; the client is the
        # entry written by the outermost one. Entries left of it are client-controlled.
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _key_hash(kind: str, key: str) -> str:
    # Usernames are compared case-insensitively, so "Alice" and "alice" share a counter.
    return hash_subject(f"{kind}:{key.lower() if kind == Kind.ACCOUNT else key}")


def _threshold(kind: str) -> int:
    if kind == Kind.ACCOUNT:
        return settings.AUTH_LOCKOUT_ACCOUNT_FAILURES
    return settings.AUTH_LOCKOUT_ADDRESS_FAILURES


def _lock_duration(lockouts: int) -> timedelta:
    seconds = settings.AUTH_LOCKOUT_SECONDS * 2 ** min(lockouts - 1, 30)
    return timedelta(seconds=min(seconds, settings.AUTH_LOCKOUT_MAX_SECONDS))


def lockout_for(keys: list[tuple[str, str]]) -> Lockout | None:
    """The lockout in force for any of `keys` ((kind, key) pairs), the longest if several."""
    now = timezone.now()
    hashes = [(kind, _key_hash(kind, key)) for kind, key in keys if key]
    if not hashes:
        return None
    query = AuthFailureCounter.objects.none()
    for kind, key_hash in hashes:
        query = query | AuthFailureCounter.objects.filter(kind=kind, key_hash=key_hash)
    until = (
        query.filter(locked_until__gt=now)
        .order_by("-locked_until")
        .values_list("locked_until", flat=True)
        .first()
    )
    return Lockout(until) if until is not None else None


def _counter_for_update(kind: str, key_hash: str, now: datetime) -> AuthFailureCounter:
    counter = (
        AuthFailureCounter.objects.select_for_update().filter(kind=kind, key_hash=key_hash).first()
    )
    if counter is not None:
        return counter
    # A new key: a good moment to drop the stale ones (rare, and bounded by the index).
    AuthFailureCounter.objects.filter(updated_at__lt=now - STALE_AFTER).exclude(
        locked_until__gt=now
    ).delete()
    try:
        with transaction.atomic():
            AuthFailureCounter.objects.create(
                kind=kind, key_hash=key_hash, window_started_at=now, updated_at=now
            )
    except IntegrityError:
        pass  # another request created it first; lock theirs
    return AuthFailureCounter.objects.select_for_update().get(kind=kind, key_hash=key_hash)


def _count_failure(kind: str, key: str, now: datetime) -> Lockout | None:
    """Count one failure of `key`; returns the lockout if this failure started one."""
    counter = _counter_for_update(kind, _key_hash(kind, key), now)
    window = timedelta(seconds=settings.AUTH_LOCKOUT_WINDOW_SECONDS)
    if counter.window_started_at <= now - window:
        counter.failures = 0
        counter.window_started_at = now
    counter.failures += 1
    counter.updated_at = now
    started = None
    if counter.failures >= _threshold(kind):
        counter.lockouts += 1
        counter.locked_until = now + _lock_duration(counter.lockouts)
        counter.failures = 0
        counter.window_started_at = now
        started = Lockout(counter.locked_until)
    counter.save()
    return started


@transaction.atomic
def auth_failure_record(
    *, request: HttpRequest, via: str, username: str | None = None
) -> Lockout | None:
    """Count a failed authentication (password or bearer token) and audit it.

    `via` names the door ("login", "admin", "bearer"). Returns the lockout now in force
    for this account or address, if any.
    """
    now = timezone.now()
    address = client_address(request)
    subject = hash_subject(username.lower()) if username else None
    payload = {"via": via, "address": hash_subject(address)}
    if subject:
        payload["subject"] = subject
    started = []
    if username:
        started.append((Kind.ACCOUNT, _count_failure(Kind.ACCOUNT, username, now)))
    started.append((Kind.ADDRESS, _count_failure(Kind.ADDRESS, address, now)))
    if via != "bearer":
        audit_append(
            project=None,
            actor=None,
            action="auth.login_failed",
            artifact=("account", subject or "unknown"),
            payload=payload,
        )
    for kind, lockout in started:
        if lockout is not None:
            audit_append(
                project=None,
                actor=None,
                action="auth.locked_out",
                artifact=("account", subject)
                if kind == Kind.ACCOUNT
                else ("address", payload["address"]),
                payload=payload | {"key": kind.value, "until": lockout.until},
            )
    return lockout_for([(Kind.ACCOUNT, username or ""), (Kind.ADDRESS, address)])


def auth_success_record(*, username: str) -> None:
    """A correct password: the account's failures are forgiven (not the address's)."""
    AuthFailureCounter.objects.filter(
        kind=Kind.ACCOUNT, key_hash=_key_hash(Kind.ACCOUNT, username)
    ).delete()
