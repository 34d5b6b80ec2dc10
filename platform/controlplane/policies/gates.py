"""Where a decision meets the product: `enforce` asks the policy in force, applies
waivers, audits the decision on the subject's timeline, and raises `PolicyDenied`.

Callers run a gate *before* their own transaction opens, so that a refusal's audit event
commits although the refused action does not. An allowed decision whose subject does not
exist yet (a job being created) is audited by the caller inside its transaction, once the
subject has its id: `record_allowed(decision, artifact=job, ...)`.

A gate with no enabled rule decides nothing and audits nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.urls import NoReverseMatch, reverse

from controlplane.policies.decide import Decision, PolicySnapshot, decide
from controlplane.policies.errors import PolicyDenied
from controlplane.policies.facts import active_waivers
from controlplane.policies.rules import Gate, rules_for
from controlplane.policies.selectors import policy_in_force


def policy_url(project) -> str:
    """The policy page ("" while no page is routed: a banner then shows no link)."""
    try:
        if project is None:
            return reverse("policy_default")
        return reverse("project_policy", args=[project.slug])
    except NoReverseMatch:
        return ""


def asks(policy: PolicySnapshot, gate: Gate) -> bool:
    """Whether the policy has an enabled rule at this gate (else the gate decides nothing)."""
    return any(policy.enabled(rule.key) for rule in rules_for(gate))


def evaluate(
    project, gate: Gate, subject: Any | Callable[[], Any], *, policy: PolicySnapshot | None = None
) -> Decision:
    """The decision, waivers applied, without auditing or raising (pages use it to warn).

    `subject` may be a function that builds it: it is called only when a rule of the gate
    is enabled, so a project whose policy asks nothing here pays one query, not the
    queries that gather the facts."""
    policy = policy or policy_in_force(project)
    if callable(subject):
        if not asks(policy, gate):
            return Decision(gate=gate, policy=policy, rule_url=policy_url(project))
        subject = subject()
    decision = decide(policy, gate, subject)
    decision.rule_url = policy_url(project)
    if decision.denials:
        keys = [(f.rule.value, f.subject.type.value, f.subject.id) for f in decision.denials]
        decision.waive(active_waivers(keys, project_ids=[project.pk] if project else None))
    return decision


def enforce(
    *,
    project,
    gate: Gate,
    subject: Any | Callable[[], Any],
    actor,
    artifact=None,
    raise_denied: bool = True,
    policy: PolicySnapshot | None = None,
) -> Decision:
    """Decide; audit a denial at once (in its own transaction when called outside one)
    and raise PolicyDenied; audit an allowance now when `artifact` is given, else leave
    it to `record_allowed`."""
    decision = evaluate(project, gate, subject, policy=policy)
    if not decision.evaluated:
        return decision
    if not decision.allowed:
        with transaction.atomic():
            target = artifact or _artifact(decision, project)
            _audit(decision, project=project, actor=actor, artifact=target)
        if raise_denied:
            raise PolicyDenied(decision)
        return decision
    if artifact is not None:
        # The audit chain's row lock needs a transaction (a savepoint inside the caller's).
        with transaction.atomic():
            _audit(decision, project=project, actor=actor, artifact=artifact)
    return decision


def record_allowed(decision: Decision, *, project, actor, artifact) -> None:
    if decision.evaluated and decision.allowed:
        _audit(decision, project=project, actor=actor, artifact=artifact)


def _artifact(decision: Decision, project):
    """The subject a refusal is about, for its audit event's artifact."""
    ref = decision.denials[0].subject
    if ref.id is None:
        return ("project", project.pk if project is not None else "")
    return (ref.type.value.replace("_", ""), ref.id)


def _audit(decision: Decision, *, project, actor, artifact) -> None:
    from controlplane.audit.services import audit_append

    audit_append(
        project=project,
        actor=actor,
        action="policy.allowed" if decision.allowed else "policy.denied",
        artifact=artifact,
        payload=decision.audit_payload(),
    )
