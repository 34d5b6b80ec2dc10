"""The one function that decides: `decide(policy, gate, subject) -> Decision`.

Pure: it reads a policy snapshot and the subject's facts (subjects.py) and says, for each
enabled rule of the gate, allow or deny with the reason and how to fix it. Waivers are
applied afterwards (`Decision.waive`), because only denials need them and most decisions
have none. Gates (gates.py) and the violation scan (scan.py) both call it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from controlplane.policies.licences import licence_verdict
from controlplane.policies.rules import RULES, Gate, RuleKey
from controlplane.policies.subjects import (
    AliasMove,
    DatasetFacts,
    DeploymentPlan,
    JobPlan,
    ModelVersionFacts,
    RetentionChange,
    SubjectRef,
)


@dataclass(frozen=True)
class PolicySnapshot:
    label: str  # "project v3", "platform v1", "platform v0" (built-in, never edited)
    version_id: int | None
    rules: dict[str, dict[str, Any]]  # normalised (rules.normalise)

    def enabled(self, key: RuleKey) -> dict[str, Any] | None:
        params = self.rules.get(key.value)
        return params if params and params.get("enabled") else None


@dataclass
class Finding:
    rule: RuleKey
    subject: SubjectRef
    reason: str
    fix: str
    waiver_id: int | None = None

    def as_dict(self, rule_url: str = "") -> dict[str, Any]:
        rule = RULES[self.rule]
        body = {
            "rule": self.rule.value,
            "rule_number": rule.number,
            "title": rule.title,
            "explanation": rule.explanation,
            "reason": self.reason,
            "fix": self.fix,
            "subject": self.subject.as_dict(),
        }
        if rule_url:
            body["rule_url"] = f"{rule_url}#rule-{self.rule.value}"
        if self.waiver_id is not None:
            body["waiver"] = self.waiver_id
        return body


@dataclass
class Decision:
    gate: Gate
    policy: PolicySnapshot
    evaluated: list[RuleKey] = field(default_factory=list)
    denials: list[Finding] = field(default_factory=list)
    waived: list[Finding] = field(default_factory=list)
    rule_url: str = ""  # the policy page, for links from an error or a banner

    @property
    def allowed(self) -> bool:
        return not self.denials

    def waive(self, waivers: dict[tuple[str, str, int], int]) -> None:
        """Move denials covered by an active waiver {(rule, subject type, id): waiver id}."""
        kept = []
        for finding in self.denials:
            key = (finding.rule.value, finding.subject.type.value, finding.subject.id)
            if finding.subject.id is not None and key in waivers:
                finding.waiver_id = waivers[key]
                self.waived.append(finding)
            else:
                kept.append(finding)
        self.denials = kept

    def message(self) -> str:
        parts = [
            f"rule {RULES[f.rule].number} ({RULES[f.rule].title}): {f.reason}" for f in self.denials
        ]
        return f"refused by the {self.policy.label} policy: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate.value,
            "policy": self.policy.label,
            "allowed": self.allowed,
            "denials": [f.as_dict(self.rule_url) for f in self.denials],
            "waived": [f.as_dict(self.rule_url) for f in self.waived],
        }

    def audit_payload(self) -> dict[str, Any]:
        return {
            "gate": self.gate.value,
            "policy": self.policy.label,
            "policy_version_id": self.policy.version_id,
            "rules": [key.value for key in self.evaluated],
            "denials": [_short(f) for f in self.denials],
            "waived": [{**_short(f), "waiver": f.waiver_id} for f in self.waived],
        }


def _short(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule.value,
        "subject": finding.subject.as_dict(),
        "reason": finding.reason,
    }


Check = Callable[[dict[str, Any], Gate, Any], Iterator[Finding]]


def decide(policy: PolicySnapshot, gate: Gate, subject: Any) -> Decision:
    decision = Decision(gate=gate, policy=policy)
    for key, check in CHECKS.items():
        params = policy.enabled(key)
        if params is None or gate not in RULES[key].gates:
            continue
        decision.evaluated.append(key)
        decision.denials.extend(check(params, gate, subject))
    return decision


# --- rule 1: licences and sources -------------------------------------------------------


def _datasets_of(gate: Gate, subject: Any) -> list[DatasetFacts]:
    if isinstance(subject, DatasetFacts):
        return [subject]
    if isinstance(subject, JobPlan):
        return subject.datasets if subject.trains else []
    return []


def check_licences(params: dict, gate: Gate, subject: Any) -> Iterator[Finding]:
    allowed = set(params["allowed_licences"])
    patterns = params["allowed_sources"]
    for data in _datasets_of(gate, subject):
        problem = licence_verdict(data.licence, allowed)
        if problem:
            accepted = ", ".join(sorted(allowed)) or "none yet"
            yield Finding(
                RuleKey.LICENCES,
                data.ref,
                f"{data.ref.label}: {problem}",
                f"set the dataset's licence to an SPDX identifier the policy allows ({accepted}), "
                "or ask a compliance officer to add its licence to the policy or to waive "
                "this rule for the version",
            )
        if patterns and not any(fnmatch.fnmatchcase(data.source, p) for p in patterns):
            source = f"source '{data.source}'" if data.source else "no source"
            yield Finding(
                RuleKey.LICENCES,
                data.ref,
                f"{data.ref.label} has {source}, which matches none of the allowed sources",
                f"record where the data came from in the dataset's source (allowed: "
                f"{', '.join(patterns)}), or have the policy's sources extended",
            )


# --- rule 2: data preparation -----------------------------------------------------------


def check_data_preparation(params: dict, gate: Gate, subject: Any) -> Iterator[Finding]:
    if not isinstance(subject, JobPlan) or not subject.trains:
        return
    for data in subject.datasets:
        yield from _preparation_findings(params, data)


def _preparation_findings(params: dict, data: DatasetFacts) -> Iterator[Finding]:
    from controlplane.serving.guardrail_defaults import PII_TYPES

    if params["require_pii_redaction"]:
        required = set(params["required_pii_types"] or PII_TYPES)
        redacting = [run for run in data.pipelines if run.pii_types is not None]
        covered = set().union(*(set(run.pii_types or PII_TYPES) for run in redacting))
        if not redacting:
            yield Finding(
                RuleKey.DATA_PREPARATION,
                data.ref,
                f"{data.ref.label} has no data-pipeline run with PII redaction in its lineage",
                "run the data pipeline with the pii stage on this version and train on the "
                "version it derives",
            )
            return
        missing = sorted(required - covered)
        if missing:
            yield Finding(
                RuleKey.DATA_PREPARATION,
                data.ref,
                f"the pipeline runs behind {data.ref.label} did not redact {', '.join(missing)}",
                f"run the data pipeline again with the pii stage covering {', '.join(missing)}",
            )
    residual = data.residual
    if residual is None:
        yield Finding(
            RuleKey.DATA_PREPARATION,
            data.ref,
            f"{data.ref.label} has no pipeline report with after-cleaning figures, so its "
            "toxicity and residual PII cannot be checked",
            "run the data pipeline on it (a current pipeline measures what is left after "
            "cleaning) and train on the version it derives",
        )
        return
    share = float(residual.get("toxic_share") or 0.0)
    if share > params["max_toxic_share"]:
        yield Finding(
            RuleKey.DATA_PREPARATION,
            data.ref,
            f"{share:.2%} of the cleaned records of {data.residual_from} are toxic "
            f"(the policy allows {params['max_toxic_share']:.2%})",
            "run the data pipeline with the toxicity stage (or a lower threshold) and train on "
            "its output",
        )
    per_1k = float(residual.get("pii_per_1k_records") or 0.0)
    if per_1k > params["max_pii_per_1k"]:
        yield Finding(
            RuleKey.DATA_PREPARATION,
            data.ref,
            f"{per_1k:g} PII per 1,000 cleaned records remain in {data.residual_from} "
            f"(the policy allows {params['max_pii_per_1k']:g})",
            "run the data pipeline with the pii stage covering every type and train on its output",
        )


# --- rule 3: residency ------------------------------------------------------------------


def _location_problem(params: dict, bucket: str, region: str) -> str | None:
    regions, buckets = params["allowed_regions"], params["allowed_buckets"]
    if regions and region not in regions:
        return (
            f"region {region or 'unknown'} is not among the allowed regions ({', '.join(regions)})"
        )
    if buckets and bucket not in buckets:
        return (
            f"bucket {bucket or 'unknown'} is not among the allowed buckets ({', '.join(buckets)})"
        )
    return None


def check_residency(params: dict, gate: Gate, subject: Any) -> Iterator[Finding]:
    fix = (
        "store the project's data in an allowed location (the platform's OBJECT_STORE_BUCKET "
        "and region), or have the policy's locations extended"
    )
    if isinstance(subject, DatasetFacts):
        problem = _location_problem(params, subject.bucket, subject.region)
        if problem:
            yield Finding(RuleKey.RESIDENCY, subject.ref, f"{subject.ref.label}: {problem}", fix)
    elif isinstance(subject, JobPlan):
        problem = _location_problem(params, subject.output_bucket, subject.output_region)
        if problem:
            yield Finding(
                RuleKey.RESIDENCY,
                subject.ref,
                f"the job's outputs would be stored in {problem}",
                fix,
            )


# --- rule 4: pending erasure ------------------------------------------------------------


def _hold_findings(data: DatasetFacts, ref: SubjectRef, what: str) -> Iterator[Finding]:
    for hold in data.holds:
        yield Finding(
            RuleKey.PENDING_ERASURE,
            ref,
            f"{what}: erasure {hold.reference} on {hold.version_label} is approved but not finished",
            "wait until the erasure has finished and use the version it rewrites",
        )


ERASED_DATA_FIX = (
    "retrain on the rewritten data (Retrain on the version page) or have a compliance "
    "officer waive rule 4 for this version"
)


def _flag_findings(version: ModelVersionFacts, what: str) -> Iterator[Finding]:
    """One finding per erasure request that flagged `version`, on the version (so that a
    waiver of rule 4 for the version lets it pass)."""
    for request_id in version.erased_by:
        yield Finding(
            RuleKey.PENDING_ERASURE,
            version.ref,
            f"{version.ref.label} was trained on data erased by erasure request #{request_id}"
            f" ({what})",
            ERASED_DATA_FIX,
        )


def protected_aliases(policy: PolicySnapshot) -> set[str]:
    """Rule 5's aliases, which rule 4 also protects from flagged versions."""
    return set((policy.rules.get(RuleKey.PROMOTION.value) or {}).get("aliases") or ())


def check_pending_erasure(params: dict, gate: Gate, subject: Any) -> Iterator[Finding]:
    mode = params.get("trained_on_erased", "warn")
    blocks = mode in ("block_serving", "require_retraining")
    if isinstance(subject, JobPlan) and subject.trains:
        for data in subject.datasets:
            yield from _hold_findings(data, data.ref, f"training on {data.ref.label}")
    elif isinstance(subject, AliasMove):
        version = subject.version
        for data in version.datasets:
            yield from _hold_findings(
                data, version.ref, f"{version.ref.label} was trained on {data.ref.label}"
            )
        if blocks and subject.protected:
            yield from _flag_findings(version, f"@{subject.alias} is protected")
    elif isinstance(subject, DeploymentPlan):
        # Holds keep a version from being promoted; a flag (policy permitting) from serving.
        if blocks:
            yield from _flag_findings(subject.version, f"{subject.ref.label} would serve it")
    elif isinstance(subject, ModelVersionFacts):
        for data in subject.datasets:
            yield from _hold_findings(
                data, subject.ref, f"{subject.ref.label} was trained on {data.ref.label}"
            )
        # The scan's question "may this version stay where it serves from?"
        if mode == "require_retraining":
            yield from _flag_findings(subject, "it is still at an alias or deployed")


# --- rule 5: promotion ------------------------------------------------------------------


def evaluation_findings(params: dict, version: ModelVersionFacts) -> Iterator[Finding]:
    from controlplane.registry.rules import NEGATED_OPS, THRESHOLD_OPS, finite_number

    label = version.ref.label
    fix = f"run an evaluate job on {label} and fix what it reports"
    if version.evaluation_id is None:
        if params["require_evaluation"] or params["thresholds"]:
            yield Finding(
                RuleKey.PROMOTION, version.ref, f"{label} has no finished evaluation", fix
            )
        return
    for threshold in params["thresholds"]:
        metric, op, limit = threshold["metric"], threshold["op"], threshold["value"]
        actual = finite_number(version.metrics.get(metric))
        if actual is None:
            reason = f"{metric} was not measured by evaluation {version.evaluation_id} of {label}"
        elif not THRESHOLD_OPS[op](actual, limit):
            reason = f"{label}'s {metric} is {actual:g}, {NEGATED_OPS[op]} {limit:g}"
        else:
            continue
        yield Finding(
            RuleKey.PROMOTION, version.ref, f"{reason} (needs {metric} {op} {limit:g})", fix
        )


def check_promotion(params: dict, gate: Gate, subject: Any) -> Iterator[Finding]:
    if isinstance(subject, AliasMove):
        if subject.alias not in params["aliases"]:
            return
        yield from evaluation_findings(params, subject.version)
        if (
            gate == Gate.PROMOTION_APPROVE
            and params["require_compliance_approval"]
            and subject.approver_role != "compliance"
        ):
            yield Finding(
                RuleKey.PROMOTION,
                subject.version.ref,
                f"@{subject.alias} needs the approval of a compliance officer",
                "ask a member with the compliance role to approve the promotion request",
            )
    elif isinstance(subject, DeploymentPlan) and params["apply_to_deployments"]:
        yield from evaluation_findings(params, subject.version)
    elif isinstance(subject, ModelVersionFacts) and params["apply_to_deployments"]:
        yield from evaluation_findings(params, subject)


# --- rule 6: serving --------------------------------------------------------------------


def _retention_problem(params: dict, days: int) -> str | None:
    low, high = params["retention_min_days"], params["retention_max_days"]
    if not low <= days <= high:
        return f"the inference archive keeps records {days} days (the policy requires {low}-{high})"
    return None


def check_serving(params: dict, gate: Gate, subject: Any) -> Iterator[Finding]:
    if isinstance(subject, RetentionChange):
        problem = _retention_problem(params, subject.retention_days)
        if problem:
            yield Finding(
                RuleKey.SERVING,
                subject.ref,
                problem,
                f"choose a retention between {params['retention_min_days']} and "
                f"{params['retention_max_days']} days",
            )
        return
    if not isinstance(subject, DeploymentPlan):
        return
    ref = subject.ref
    if params["require_archive"] and not subject.archive:
        yield Finding(
            RuleKey.SERVING,
            ref,
            f"{ref.label} does not archive requests",
            "turn on archiving of requests and responses for the deployment",
        )
    if params["require_input_pii_redaction"] and subject.input_pii not in ("redact", "refuse"):
        yield Finding(
            RuleKey.SERVING,
            ref,
            f"{ref.label} passes personal data in requests to the model (input PII: "
            f"{subject.input_pii})",
            "set the deployment's input PII guardrail to redact or refuse",
        )
    problem = _retention_problem(params, subject.retention_days)
    if problem:
        yield Finding(
            RuleKey.SERVING,
            ref,
            problem,
            "change the project's archive retention (serving settings) to "
            f"{params['retention_min_days']}-{params['retention_max_days']} days",
        )


# --- rule 7: compute --------------------------------------------------------------------


def check_compute(params: dict, gate: Gate, subject: Any) -> Iterator[Finding]:
    if not isinstance(subject, JobPlan):
        return
    if subject.queue not in params["allowed_queues"]:
        yield Finding(
            RuleKey.COMPUTE,
            subject.ref,
            f"{subject.kind} jobs would run on the {subject.queue} queue, which the project may "
            f"not use (allowed: {', '.join(params['allowed_queues']) or 'none'})",
            "ask a compliance officer to allow the queue, or run where the policy allows",
        )
    if subject.gpus > params["max_gpus_per_job"]:
        yield Finding(
            RuleKey.COMPUTE,
            subject.ref,
            f"the job asks for {subject.gpus} GPU(s); the policy allows "
            f"{params['max_gpus_per_job']} per job",
            f"ask for at most {params['max_gpus_per_job']} GPU(s)",
        )


CHECKS: dict[RuleKey, Check] = {
    RuleKey.LICENCES: check_licences,
    RuleKey.DATA_PREPARATION: check_data_preparation,
    RuleKey.RESIDENCY: check_residency,
    RuleKey.PENDING_ERASURE: check_pending_erasure,
    RuleKey.PROMOTION: check_promotion,
    RuleKey.SERVING: check_serving,
    RuleKey.COMPUTE: check_compute,
}
