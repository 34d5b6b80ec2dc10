"""A gate's refusal on a page: the buttons post, redirect, and the page they land on shows
the refusal as a banner (templates/policies/_denied.html) with the rules, reasons, fixes
and links, the same as the API's 409 body. The refusal travels in the session, read once.
"""

from __future__ import annotations

from typing import Any

from controlplane.policies.errors import PolicyDenied

SESSION_KEY = "policy_denied"


def keep_denied(request, error: PolicyDenied) -> None:
    """Remember the refusal for the next page this session shows (after a redirect)."""
    request.session[SESSION_KEY] = error.body()


def take_denied(request) -> dict[str, Any] | None:
    """The refusal kept by `keep_denied`, once (None when there is none)."""
    session = getattr(request, "session", None)
    if session is None or SESSION_KEY not in session:
        return None
    return session.pop(SESSION_KEY)
