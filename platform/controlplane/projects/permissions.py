"""What each role may do in a project. One table, read by API views and pages alike."""

from __future__ import annotations

import enum

from controlplane.projects.models import Role


class Action(enum.StrEnum):
    VIEW = "view"  # see the project, its jobs, uploads and audit trail
    RUN = "run"  # upload data, start and cancel jobs
    MANAGE = "manage"  # edit the project, add/remove members, change roles
    REVIEW = "review"  # compliance review (erasure requests, policies)
    INFER = "infer"  # call the project's deployments (a token with the inference scope)


ALLOWED: dict[Action, frozenset[str]] = {
    Action.VIEW: frozenset(Role.values),
    Action.RUN: frozenset({Role.OWNER, Role.ENGINEER}),
    Action.MANAGE: frozenset({Role.OWNER}),
    Action.REVIEW: frozenset({Role.OWNER, Role.COMPLIANCE}),
    Action.INFER: frozenset({Role.OWNER, Role.ENGINEER}),
}


def role_allows(role: str | None, action: Action) -> bool:
    return role is not None and role in ALLOWED[action]
