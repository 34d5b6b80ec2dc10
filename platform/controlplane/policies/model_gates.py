"""The gates of models and serving: what the registry and serving services ask the policy
before an alias moves, a promotion is approved, a deployment is created or switched, or
the inference archive's retention changes.

Each `check_*` runs outside the caller's transaction (a refusal's audit event must commit
although the refused action does not) and raises `PolicyDenied`; it returns what the
caller records with `record_*` inside its transaction, once the action happened, so an
allowance is audited only with the change it allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.policies import gates
from controlplane.policies.decide import Decision, PolicySnapshot, protected_aliases
from controlplane.policies.errors import PolicyDenied
from controlplane.policies.facts import model_version_facts
from controlplane.policies.models import SubjectType
from controlplane.policies.rules import Gate, RuleKey
from controlplane.policies.selectors import policy_in_force
from controlplane.policies.subjects import (
    AliasMove,
    DeploymentPlan,
    ModelVersionFacts,
    RetentionChange,
    SubjectRef,
)


def version_facts(project, version, policy: PolicySnapshot | None = None) -> ModelVersionFacts:
    """The version's facts; its training data's (lineage, erasure holds) only while the
    pending-erasure rule is enabled, the one rule of these gates that reads them."""
    policy = policy or policy_in_force(project)
    with_data = policy.enabled(RuleKey.PENDING_ERASURE) is not None
    return model_version_facts([version.pk], with_data=with_data)[version.pk]


class _Facts:
    """A version's facts, gathered on first use and then shared by the move and the switches."""

    def __init__(self, project, version, policy: PolicySnapshot):
        self.args, self.value = (project, version, policy), None

    def __call__(self) -> ModelVersionFacts:
        if self.value is None:
            self.value = version_facts(*self.args)
        return self.value


def deployment_ref(deployment=None, *, name: str = "") -> SubjectRef:
    if deployment is None:
        return SubjectRef(SubjectType.DEPLOYMENT, None, f"deployment {name}")
    return SubjectRef(SubjectType.DEPLOYMENT, deployment.pk, f"deployment {deployment.name}")


def input_pii_of(guardrails) -> str:
    return (guardrails or {}).get("pii", "redact")


def retention_of(project) -> int:
    from controlplane.serving.archive import retention_days_of

    return retention_days_of(project)


# -- alias moves and promotions ----------------------------------------------------------


@dataclass
class MoveCheck:
    """What was decided for one alias move: the move itself and each follower's switch."""

    project: object
    version: object
    move: Decision | None = None
    switches: list[tuple[object, Decision]] = field(default_factory=list)


def check_alias_move(
    *, project, actor, version, alias: str, moves_now: bool, approver_role: str | None = None
) -> MoveCheck:
    """Rules 4 and 5 for moving `alias` to `version` (Gate.ALIAS_MOVE, or
    Gate.PROMOTION_APPROVE with the approver's role), and, when the alias moves now
    (`moves_now`), rules 5 and 6 for every running deployment that follows it
    (Gate.DEPLOYMENT_SWITCH): a follower that would violate them refuses the move."""
    policy = policy_in_force(project)  # once for the move and every switch
    facts = _Facts(project, version, policy)
    gate = Gate.ALIAS_MOVE if approver_role is None else Gate.PROMOTION_APPROVE
    check = MoveCheck(project=project, version=version)
    check.move = gates.enforce(
        project=project,
        gate=gate,
        subject=lambda: AliasMove(
            version=facts(),
            alias=alias,
            approver_role=approver_role,
            protected=alias in protected_aliases(policy),
        ),
        actor=actor,
        policy=policy,
    )
    if moves_now and gates.asks(policy, Gate.DEPLOYMENT_SWITCH):
        check.switches = check_switch(
            project=project,
            actor=actor,
            model_id=version.model_id,
            alias=alias,
            facts=facts,
            policy=policy,
        )
    return check


def record_alias_move(check: MoveCheck, *, actor) -> None:
    """Audit the allowances of `check_alias_move`, inside the move's transaction, after its
    row changes (the audit chain is locked last)."""
    if check.move is not None:
        gates.record_allowed(check.move, project=check.project, actor=actor, artifact=check.version)
    for deployment, decision in check.switches:
        gates.record_allowed(decision, project=check.project, actor=actor, artifact=deployment)


def check_switch(
    *,
    project,
    actor,
    model_id: int,
    alias: str,
    facts: Callable[[], ModelVersionFacts],
    policy: PolicySnapshot,
) -> list[tuple[object, Decision]]:
    """Gate.DEPLOYMENT_SWITCH for each running deployment following `alias`, as it would
    serve `facts`' version. Every refusal is audited on its deployment; then one
    PolicyDenied names them all. -> [(deployment, allowed decision)] to record."""
    from controlplane.serving.models import Deployment, DeploymentState

    followers = Deployment.objects.filter(
        model_id=model_id, alias=alias, state=DeploymentState.RUNNING
    ).order_by("pk")
    if not followers:
        return []
    retention = retention_of(project)
    allowed: list[tuple[object, Decision]] = []
    refused: list[Decision] = []
    for deployment in followers:
        plan = DeploymentPlan(
            ref=deployment_ref(deployment),
            archive=deployment.archive_requests,
            input_pii=input_pii_of(deployment.guardrails),
            retention_days=retention,
            version=facts(),
        )
        decision = gates.evaluate(project, Gate.DEPLOYMENT_SWITCH, plan, policy=policy)
        if decision.allowed:
            allowed.append((deployment, decision))
            continue
        # Audited on the deployment's timeline (enforce decides again: the same answer).
        refused.append(
            gates.enforce(
                project=project,
                gate=Gate.DEPLOYMENT_SWITCH,
                subject=plan,
                actor=actor,
                artifact=deployment,
                raise_denied=False,
                policy=policy,
            )
        )
        for finding in refused[-1].denials:
            if finding.subject != plan.ref:  # say which deployment the finding is about
                finding.reason = f"{plan.ref.label} follows @{alias}: {finding.reason}"
    if refused:
        raise PolicyDenied(_merged(refused))
    return allowed


def _merged(decisions: list[Decision]) -> Decision:
    first = decisions[0]
    merged = Decision(gate=first.gate, policy=first.policy, rule_url=first.rule_url)
    for decision in decisions:
        merged.evaluated.extend(k for k in decision.evaluated if k not in merged.evaluated)
        merged.denials.extend(decision.denials)
        merged.waived.extend(decision.waived)
    return merged


# -- deployments and serving settings -----------------------------------------------------


def check_deployment_create(
    *, project, actor, name: str, version, archive: bool, guardrails, facts=None
) -> Decision:
    """Rules 4-6 for a deployment about to be created (Gate.DEPLOYMENT_CREATE); record
    the allowance with `gates.record_allowed(decision, artifact=deployment)`."""

    def plan() -> DeploymentPlan:
        return DeploymentPlan(
            ref=deployment_ref(name=name),
            archive=archive,
            input_pii=input_pii_of(guardrails),
            retention_days=retention_of(project),
            version=facts or version_facts(project, version),
        )

    return gates.enforce(project=project, gate=Gate.DEPLOYMENT_CREATE, subject=plan, actor=actor)


def check_deployment_update(*, project, actor, deployment, guardrails, archive: bool) -> Decision:
    """Rule 6 for a deployment whose guardrails or archiving change (Gate.DEPLOYMENT_UPDATE):
    what it would be afterwards must comply, so a deployment cannot be created compliant
    and then quietly stop archiving or redacting."""

    def plan() -> DeploymentPlan:
        return DeploymentPlan(
            ref=deployment_ref(deployment),
            archive=archive,
            input_pii=input_pii_of(guardrails),
            retention_days=retention_of(project),
            version=version_facts(project, deployment.target_version),
        )

    return gates.enforce(project=project, gate=Gate.DEPLOYMENT_UPDATE, subject=plan, actor=actor)


def check_deployment_start(*, project, actor, deployment, version) -> Decision:
    """Rules 4-6 for a stopped deployment about to serve `version` again
    (Gate.DEPLOYMENT_START): the policy may have changed while it was stopped."""

    def plan() -> DeploymentPlan:
        return DeploymentPlan(
            ref=deployment_ref(deployment),
            archive=deployment.archive_requests,
            input_pii=input_pii_of(deployment.guardrails),
            retention_days=retention_of(project),
            version=version_facts(project, version),
        )

    return gates.enforce(project=project, gate=Gate.DEPLOYMENT_START, subject=plan, actor=actor)


def check_retention(*, project, actor, retention_days: int) -> Decision:
    """Rule 6's retention range for a change of the archive's retention
    (Gate.SERVING_SETTINGS); record the allowance with the settings row."""
    change = RetentionChange(
        ref=SubjectRef(SubjectType.PROJECT, project.pk, project.name),
        retention_days=retention_days,
    )
    return gates.enforce(project=project, gate=Gate.SERVING_SETTINGS, subject=change, actor=actor)
