"""Errors of the policy services; each carries the HTTP status the API answers with.

`PolicyDenied` is what a gate raises: a 409 whose body names, for every rule that said
no, the rule, the reason and how to fix it (api/errors.py renders it in the usual shape
with a `denials` list beside the message).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.policies.decide import Decision


class PolicyError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class InvalidPolicy(PolicyError):
    status = 400
    code = "invalid"


class NotAllowed(PolicyError):
    status = 403
    code = "permission_denied"


class NotFound(PolicyError):
    status = 404
    code = "not_found"


class Conflict(PolicyError):
    status = 409
    code = "conflict"


class PolicyDenied(PolicyError):
    """A gate refused an action: `decision.denials` say which rules, why and the fix."""

    status = 409
    code = "policy_denied"

    def __init__(self, decision: Decision):
        super().__init__(decision.message())
        self.decision = decision

    def body(self) -> dict:
        return self.decision.as_dict()
