"""Reads of the compliance pages: a policy's history as readable changes, violations grouped
by rule with links to their subjects, recent denials and scans, and the staff overview
of every project. Batched, so a page costs a fixed number of queries however many rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db.models import Count, Prefetch, QuerySet
from django.urls import reverse
from django.utils import timezone

from controlplane.policies import selectors
from controlplane.policies.models import (
    Policy,
    PolicyScan,
    SubjectType,
    Violation,
    ViolationComment,
    ViolationState,
    Waiver,
)
from controlplane.policies.rules import RULES

DENIED = "policy.denied"
RECENT_DENIALS = 20
RECENT_SCANS = 5
OVERVIEW_DAYS = 7
HOLD_CHOICES = 500  # dataset versions offered by the "place a hold" form, newest first


def project_id_by_slug(slug: str) -> int | None:
    from controlplane.projects.models import Project

    return Project.objects.filter(slug=slug).values_list("pk", flat=True).first()


def rule_title(key: str) -> str:
    rule = RULES.get(key)  # a rule removed from the catalogue still names its rows
    return f"Rule {rule.number}: {rule.title}" if rule else key


@dataclass
class RuleView:
    """One rule of a policy as a page shows it."""

    key: str
    number: int
    title: str
    explanation: str
    enabled: bool
    params: list[dict[str, Any]]  # {name, label, help, value}
    form: Any = None  # the rule's edit form, for those who may edit


def rules_view(rules: dict[str, dict[str, Any]]) -> list[RuleView]:
    return [
        RuleView(
            key=key.value,
            number=rule.number,
            title=rule.title,
            explanation=rule.explanation,
            enabled=bool(rules[key.value].get("enabled")),
            params=[
                {"name": p.name, "label": p.label, "help": p.help, "value": rules[key][p.name]}
                for p in rule.params
            ],
        )
        for key, rule in RULES.items()
    ]


def _param_label(rule_key: str, name: str) -> str:
    rule = RULES.get(rule_key)
    if name == "enabled" or rule is None:
        return name
    return next((p.label for p in rule.params if p.name == name), name)


def changes_of(diff: dict[str, Any]) -> list[dict[str, Any]]:
    """A version's diff as rows: {rule, param, before, after} in the catalogue's order."""
    order = {key.value: rule.number for key, rule in RULES.items()}
    rows = []
    for key in sorted(diff, key=lambda k: order.get(k, 99)):
        for name, change in diff[key].items():
            rows.append(
                {
                    "rule": rule_title(key),
                    "rule_key": key,
                    "param": _param_label(key, name),
                    "before": change.get("before"),
                    "after": change.get("after"),
                }
            )
    return rows


def history(project, limit: int = 50) -> list[dict[str, Any]]:
    """The newest versions of the project's own policy (None: the default's) with changes."""
    return [
        {"version": version, "changes": changes_of(version.diff)}
        for version in selectors.policy_versions(project)[:limit]
    ]


def versions_since(project, number: int) -> list[dict[str, Any]]:
    """The versions made after `number`: what an editor who saw `number` missed."""
    newer = selectors.policy_versions(project).filter(number__gt=number)
    return [{"version": v, "changes": changes_of(v.diff)} for v in newer]


# -- subjects ----------------------------------------------------------------------------


def subject_urls(project, refs: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """{(subject type, id): page URL} for the subjects named, in one query per type."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.registry.models import ModelVersion
    from controlplane.serving.models import Deployment

    ids: dict[str, list[int]] = {}
    for subject_type, subject_id in refs:
        ids.setdefault(subject_type, []).append(subject_id)
    urls: dict[tuple[str, int], str] = {}
    for pk in ids.get(SubjectType.JOB, []):
        urls[(SubjectType.JOB, pk)] = reverse("job-detail", args=[project.pk, pk])
    if ids.get(SubjectType.DATASET_VERSION):
        rows = DatasetVersion.objects.filter(
            pk__in=ids[SubjectType.DATASET_VERSION], dataset__project=project
        ).values_list("pk", "dataset_id", "number")
        for pk, dataset_id, number in rows:
            urls[(SubjectType.DATASET_VERSION, pk)] = reverse(
                "dataset-version", args=[project.pk, dataset_id, number]
            )
    if ids.get(SubjectType.MODEL_VERSION):
        rows = ModelVersion.objects.filter(
            pk__in=ids[SubjectType.MODEL_VERSION], model__project=project
        ).values_list("pk", "model__name", "number")
        for pk, name, number in rows:
            urls[(SubjectType.MODEL_VERSION, pk)] = reverse(
                "registry-version", args=[project.pk, name, number]
            )
    if ids.get(SubjectType.DEPLOYMENT):
        rows = Deployment.objects.filter(
            pk__in=ids[SubjectType.DEPLOYMENT], project=project
        ).values_list("pk", "name")
        for pk, name in rows:
            urls[(SubjectType.DEPLOYMENT, pk)] = reverse(
                "serving-deployment", args=[project.pk, name]
            )
    return urls


def _link(rows, project) -> None:
    urls = subject_urls(project, {(row.subject_type, row.subject_id) for row in rows})
    for row in rows:
        row.subject_url = urls.get((row.subject_type, row.subject_id), "")


# -- the compliance page -----------------------------------------------------------------


@dataclass
class RuleViolations:
    key: str
    title: str
    violations: list[Violation] = field(default_factory=list)


def open_violations_by_rule(project) -> list[RuleViolations]:
    rows = list(
        selectors.violations_of(project).prefetch_related(
            Prefetch("comments", queryset=ViolationComment.objects.select_related("author"))
        )
    )
    _link(rows, project)
    groups: dict[str, RuleViolations] = {}
    for row in rows:
        groups.setdefault(
            row.rule, RuleViolations(row.rule, rule_title(row.rule))
        ).violations.append(row)
    order = {key.value: rule.number for key, rule in RULES.items()}
    return sorted(groups.values(), key=lambda group: order.get(group.key, 99))


def active_waivers(project) -> list[Waiver]:
    rows = list(selectors.active_waivers_of(project))
    _link(rows, project)
    for row in rows:
        row.rule_title = rule_title(row.rule)
    return rows


def active_holds(project) -> QuerySet:
    return selectors.holds_of(project)


def recent_denials(project, limit: int = RECENT_DENIALS) -> list[dict[str, Any]]:
    """The latest refusals on the project's audit trail, with who was refused."""
    from controlplane.audit.selectors import actor_names, audit_events_for

    events = list(audit_events_for(project, action=DENIED)[:limit])
    names = actor_names(events)
    return [
        {
            "event": event,
            "actor": names.get(event.actor_id, "system"),
            "gate": event.payload.get("gate", ""),
            "policy": event.payload.get("policy", ""),
            "denials": [
                {**denial, "title": rule_title(denial.get("rule", ""))}
                for denial in event.payload.get("denials", [])
                if isinstance(denial, dict)
            ],
        }
        for event in events
    ]


def recent_scans(project, limit: int = RECENT_SCANS) -> QuerySet[PolicyScan]:
    return selectors.scans_of(project)[:limit]


def hold_choices(project) -> list[tuple[int, str]]:
    """(dataset version id, "slug vN") of the project's versions, newest first."""
    from controlplane.datasets.models import DatasetVersion

    rows = (
        DatasetVersion.objects.filter(dataset__project=project)
        .order_by("-created_at", "-id")
        .values_list("pk", "dataset__slug", "number")[:HOLD_CHOICES]
    )
    return [(pk, f"{slug} v{number}") for pk, slug, number in rows]


# -- the staff overview ------------------------------------------------------------------


@dataclass
class ProjectCompliance:
    project: Any
    policy_label: str
    violations: list[tuple[str, int]]  # (rule title, open count), in rule order
    open_violations: int
    waivers: int
    holds: int
    denials: int


def _counts(rows) -> dict:
    return {row[0]: row[1] for row in rows}


def overview(days: int = OVERVIEW_DAYS, *, projects=None) -> list[ProjectCompliance]:
    """Every project's compliance (or those of `projects`, a queryset: the dashboard's
    overview shows a member's own) in a fixed number of queries."""
    from controlplane.audit.models import AuditEvent
    from controlplane.policies.models import ErasureHold
    from controlplane.projects.models import Project

    now = timezone.now()
    projects = list((projects if projects is not None else Project.objects).order_by("name", "pk"))
    # Counted for the listed projects only: the platform's other projects (other
    # organisations') would only make every query longer.
    ids = [project.pk for project in projects]
    own = _counts(
        Policy.objects.filter(project_id__in=ids, current_number__gt=0).values_list(
            "project_id", "current_number"
        )
    )
    org_defaults = _counts(
        Policy.objects.filter(
            organisation_id__in={project.organisation_id for project in projects},
            current_number__gt=0,
        ).values_list("organisation_id", "current_number")
    )
    default = selectors.current_number(None)
    by_rule: dict[int, dict[str, int]] = {}
    open_rows = (
        Violation.objects.filter(project_id__in=ids, state=ViolationState.OPEN)
        .values_list("project_id", "rule")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for project_id, rule, count in open_rows:
        by_rule.setdefault(project_id, {})[rule] = count
    waivers = _counts(
        Waiver.objects.filter(project_id__in=ids, revoked_at__isnull=True, expires_at__gt=now)
        .values_list("project_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    holds = _counts(
        ErasureHold.objects.filter(project_id__in=ids, released_at__isnull=True)
        .values_list("project_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    denials = _counts(
        AuditEvent.objects.filter(
            project_id__in=ids, action=DENIED, created_at__gte=now - timedelta(days=days)
        )
        .values_list("project_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    order = {key.value: rule.number for key, rule in RULES.items()}
    result = []
    for project in projects:
        counts = by_rule.get(project.pk, {})
        if project.pk in own:
            label = f"project v{own[project.pk]}"
        elif project.organisation_id in org_defaults:
            label = f"org v{org_defaults[project.organisation_id]}"
        else:
            label = f"platform v{default}"
        result.append(
            ProjectCompliance(
                project=project,
                policy_label=label,
                violations=[
                    (rule_title(key), counts[key])
                    for key in sorted(counts, key=lambda k: order.get(k, 99))
                ],
                open_violations=sum(counts.values()),
                waivers=waivers.get(project.pk, 0),
                holds=holds.get(project.pk, 0),
                denials=denials.get(project.pk, 0),
            )
        )
    return result
