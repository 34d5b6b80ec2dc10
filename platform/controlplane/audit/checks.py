"""`manage.py check --database default` fails when a trigger guarding the audit trail is gone.

A database check (Tags.database) runs only when a database is named: with
`check --database default`, and before every `migrate` (including `migrate --check`).
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from controlplane.audit.triggers import audit_trigger_problems

REPAIR_HINT = (
    "Find out who removed it (the chain may have been rewritten meanwhile: run "
    "`manage.py audit_verify`), then re-create the guards as the tables' owner: "
    "`manage.py migrate --skip-checks audit 0001 && manage.py migrate --skip-checks audit`."
)


@register(Tags.database)
def check_audit_triggers(app_configs=None, databases=None, **kwargs) -> list[Error]:
    errors = []
    for alias in databases or []:
        for problem in audit_trigger_problems(alias):
            errors.append(
                Error(f"audit trail ({alias}): {problem}", hint=REPAIR_HINT, id="audit.E001")
            )
    return errors


@register(Tags.security, deploy=True)
def check_audit_anchor_key(app_configs=None, **kwargs) -> list[Warning]:
    if settings.AUDIT_ANCHOR_KEY.strip():
        return []
    return [
        Warning(
            "AUDIT_ANCHOR_KEY is not set: audit anchors are signed with a key derived from "
            "SECRET_KEY, so rotating SECRET_KEY makes every existing anchor fail verification.",
            hint="Set AUDIT_ANCHOR_KEY to a random string of 32+ characters and keep it.",
            id="audit.W001",
        )
    ]
