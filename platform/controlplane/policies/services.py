"""Writes: editing a policy (a new version each time). Waivers, violations and erasure
holds have their own modules (waivers.py, violations.py, holds.py)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from controlplane.policies.errors import Conflict, InvalidPolicy, NotAllowed
from controlplane.policies.models import Policy, PolicyVersion
from controlplane.policies.rules import check_changes, diff, normalise
from controlplane.policies.selectors import policy_in_force
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of

MAX_REASON = 2000


def can_edit_policy(actor, project, organisation=None) -> bool:
    """Owners and compliance officers edit a project's policy, an organisation's admins its
    default, staff the platform default (and every other)."""
    if organisation is not None:
        from controlplane.orgs.selectors import is_org_admin

        return bool(actor.is_authenticated and is_org_admin(actor, organisation))
    if project is None:
        return bool(actor.is_authenticated and actor.is_staff)
    return role_allows(role_of(actor, project), Action.REVIEW)


def policy_update(
    *,
    project,
    actor,
    changes: Any,
    reason: Any,
    base_version: Any,
    organisation=None,
) -> PolicyVersion:
    """Apply `changes` ({rule: {param: value}}) as a new version of the project's policy
    (project None: the default of `organisation`, or the platform's when that is None
    too). `base_version` is the version the editor saw (0 while it follows a default): if
    another edit landed since, 409 and nothing is written, so no edit is lost."""
    if project is not None and organisation is not None:
        raise ValueError("a policy belongs to a project or to an organisation, not both")
    scope = project if project is not None else organisation
    if not can_edit_policy(actor, project, organisation):
        if organisation is not None:
            who = "an admin of the organisation"
        else:
            who = "staff" if project is None else "the owner or compliance role"
        raise NotAllowed(f"editing this policy needs {who}")
    if isinstance(base_version, bool) or not isinstance(base_version, int) or base_version < 0:
        raise InvalidPolicy(
            "base_version is required: the version number you edited (0 for a policy not yet edited)",
            fields={"base_version": ["must be a whole number >= 0"]},
        )
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise InvalidPolicy(
            "say why the policy changes", fields={"reason": [f"1-{MAX_REASON} characters"]}
        )
    with transaction.atomic():
        policy = _locked_policy(project, organisation)
        if policy.current_number != base_version:
            raise Conflict(
                f"the policy changed while you edited it: it is at v{policy.current_number} now, "
                f"you edited v{base_version}; reload it and apply your change again"
            )
        before = _rules_before(policy, scope)
        after = check_changes(before, changes)
        changed = diff(before, after)
        if not changed:
            raise InvalidPolicy(
                "the changes leave the policy as it is", fields={"rules": ["no change"]}
            )
        policy.current_number += 1
        policy.save(update_fields=["current_number"])
        version = PolicyVersion.objects.create(
            policy=policy,
            number=policy.current_number,
            rules=after,
            diff=changed,
            reason=reason.strip(),
            created_by=actor,
        )
        _audit_change(project, actor, version, policy)
    return version


def _locked_policy(project, organisation) -> Policy:
    """The policy row, locked; made on the first edit (the unique constraints settle a race
    between two first edits: the loser's get_or_create finds the winner's row)."""
    policy, _ = Policy.objects.get_or_create(project=project, organisation=organisation)
    return Policy.objects.select_for_update().get(pk=policy.pk)


def _rules_before(policy: Policy, scope) -> dict[str, dict[str, Any]]:
    if policy.current_number:
        latest = policy.versions.get(number=policy.current_number)
        return normalise(latest.rules)
    if scope is None:
        return normalise({})
    # A first edit starts from the policy followed until now: a project's, its
    # organisation's default (or the platform's); an organisation's, the platform's.
    followed = None if scope._meta.model_name == "organisation" else scope.organisation
    return normalise(policy_in_force(followed).rules)


def _audit_change(project, actor, version: PolicyVersion, policy: Policy) -> None:
    from controlplane.audit.services import audit_append

    payload_org = {"organisation": policy.organisation.slug} if policy.organisation_id else {}
    audit_append(
        project=project,
        actor=actor,
        action="policy.updated",
        artifact=version,
        payload={
            **payload_org,
            "scope": policy.scope,
            "version": version.number,
            "reason": version.reason,
            "diff": version.diff,
        },
    )
