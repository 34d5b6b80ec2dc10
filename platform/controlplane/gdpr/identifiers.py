"""A data subject's identifiers: checked, keyed-hashed, encrypted at rest, masked.

    email: ann@example.com         -> Identifier(type="email", value="ann@example.com")
    keyed_hash(project, value)     -> HMAC-SHA256(project subject key, value stripped+casefolded)
    seal(project, value) / unseal  -> a Fernet token, readable only with SECRET_KEY
    masked("email", "ann@ex.com")  -> "a***@ex.com"

The hash is the one the inference archive's index holds (serving/subjects.py and
workers.serve.protocol.subject_hash), so a request finds the subject's records there. The
Fernet key is derived from SECRET_KEY (as the idempotency store's is, with its own
context string, per project), which lives in the environment, not the database: a dump
of the database alone reveals no identifier. SECRET_KEY_FALLBACKS keep older tokens
readable after a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from controlplane.gdpr.errors import InvalidRequest
from controlplane.subject_keys import subject_hash

MAX_IDENTIFIERS = 20
MAX_VALUE = 320  # the longest e-mail address RFC 3696 allows
TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class Identifier:
    type: str
    value: str


def checked(raw: object) -> list[Identifier]:
    """The identifiers of a request, or InvalidRequest naming the bad one.

    `raw` is a list of {"type", "value"} dicts (the API) or of Identifier (a form).
    """
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(
            "a request needs at least one identifier of the subject",
            fields={"identifiers": ["give at least one identifier (e.g. email: ann@example.com)"]},
        )
    if len(raw) > MAX_IDENTIFIERS:
        raise InvalidRequest(
            f"at most {MAX_IDENTIFIERS} identifiers per request",
            fields={"identifiers": [f"at most {MAX_IDENTIFIERS}"]},
        )
    found: list[Identifier] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        kind = item.type if isinstance(item, Identifier) else (item or {}).get("type")
        value = item.value if isinstance(item, Identifier) else (item or {}).get("value")
        field = f"identifiers.{index}"
        if not isinstance(kind, str) or not TYPE_PATTERN.fullmatch(kind.strip().lower()):
            raise InvalidRequest(
                f"identifier {index + 1}: the type is a short lowercase word (email, customer_id)",
                fields={f"{field}.type": ["a lowercase word: letters, digits, _"]},
            )
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_VALUE:
            raise InvalidRequest(
                f"identifier {index + 1}: the value is required (at most {MAX_VALUE} characters)",
                fields={f"{field}.value": [f"1-{MAX_VALUE} characters"]},
            )
        if _UNSTORABLE.search(value):
            raise InvalidRequest(
                f"identifier {index + 1}: the value holds control characters",
                fields={f"{field}.value": ["no control characters"]},
            )
        kind, value = kind.strip().lower(), value.strip()
        if kind == "email" and not _EMAIL.fullmatch(value):
            raise InvalidRequest(
                f"identifier {index + 1}: not an e-mail address",
                fields={f"{field}.value": ["an e-mail address (name@domain)"]},
            )
        normalised = value.casefold()
        if normalised in seen:
            raise InvalidRequest(
                f"identifier {index + 1} repeats an earlier one",
                fields={f"{field}.value": ["given twice"]},
            )
        seen.add(normalised)
        found.append(Identifier(kind, value))
    return found


def parse_lines(text: str) -> list[Identifier]:
    """The form's text, one `type: value` a line; InvalidRequest naming a bad line."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        kind, colon, value = line.partition(":")
        if not colon or not kind.strip() or not value.strip():
            raise InvalidRequest(
                f"line {number}: write `type: value`, e.g. `email: ann@example.com`",
                fields={"identifiers": [f"line {number}: write `type: value`"]},
            )
        found.append(Identifier(kind.strip().lower(), value.strip()))
    return checked(found)


def keyed_hash(project, value: str) -> str:
    """The subject's keyed hash in `project` (what indexes and audit events hold)."""
    return subject_hash(project, value)


def _fernet(project_id: int, secret: str) -> Fernet:
    key = hmac.new(
        secret.encode(), f"gdpr-identifier\0{project_id}".encode(), hashlib.sha256
    ).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _keys(project_id: int) -> MultiFernet:
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([_fernet(project_id, secret) for secret in secrets])


def seal(project_id: int, value: str) -> str:
    return _keys(project_id).encrypt(value.encode()).decode()


def unseal(project_id: int, token: str) -> str:
    """The value in clear; a placeholder when the key that sealed it is gone (a rotated
    SECRET_KEY without its fallback), so a page still renders."""
    try:
        return _keys(project_id).decrypt(token.encode()).decode()
    except InvalidToken:
        return "(unreadable: sealed with a retired key)"


def readable(project_id: int, token: str) -> bool:
    """Whether the token opens with the current keys (an erasure must not search for the
    placeholder `unseal` shows instead)."""
    try:
        _keys(project_id).decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def masked(kind: str, value: str) -> str:
    """What members who may not see the subject in clear see: "a***@example.com", "C***"."""
    if kind == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    return f"{value[:1]}***"
