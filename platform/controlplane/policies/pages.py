"""What pages show of the policy: a refusal as a banner (templates/policies/_denied.html),
a warning before a form is sent, and a subject's open violations, all in the shape of
`Decision.as_dict()` so that one template renders them."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from controlplane.policies.errors import PolicyDenied
from controlplane.policies.gates import evaluate, policy_url
from controlplane.policies.rules import RULES, Gate
from controlplane.policies.selectors import open_violations_of_subject

# A refusal kept for the next page, when the refused form's view redirects.
SESSION_KEY = "policy_denied"


def denied_show(request: HttpRequest, error: PolicyDenied) -> None:
    """Show the refusal on the page this request renders, or on the next one if it
    redirects (base.html's `{% policy_denied_banner %}` shows it once)."""
    body = error.decision.as_dict()
    request.policy_denied = body
    if hasattr(request, "session"):
        request.session[SESSION_KEY] = body


def denied_for_page(request: HttpRequest) -> dict[str, Any] | None:
    carried = request.session.pop(SESSION_KEY, None) if hasattr(request, "session") else None
    return getattr(request, "policy_denied", None) or carried


def gate_warning(project, gate: Gate, subject) -> dict[str, Any] | None:
    """The refusal a form would meet now (pages warn before the user sends it), or None."""
    decision = evaluate(project, gate, subject)
    return decision.as_dict() if decision.denials else None


def violations_banner(project, subject_type: str, subject_id: int) -> dict[str, Any] | None:
    """A subject's open violations in the banner's shape, or None when it has none."""
    rows = list(open_violations_of_subject(subject_type, subject_id))
    if not rows:
        return None
    url = policy_url(project)
    denials = []
    for row in rows:
        rule = RULES.get(row.rule)  # a StrEnum key is found by its value
        denials.append(
            {
                "rule": row.rule,
                "rule_number": rule.number if rule else "?",
                "title": rule.title if rule else row.rule,
                "explanation": rule.explanation if rule else "",
                "reason": row.reason,
                "fix": row.fix,
                **({"rule_url": f"{url}#rule-{row.rule}"} if url else {}),
            }
        )
    return {"policy": rows[0].policy_version, "denials": denials}
