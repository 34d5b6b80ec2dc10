"""`{{ event.payload|audit_payload }}`: an event's details as "key: value" text, not a
Python dict's repr; the exact JSON stays in the exports (and the API)."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@register.filter(name="audit_payload")
def audit_payload(payload: Any) -> str:
    if not payload:
        return ""
    if not isinstance(payload, dict):
        return _text(payload)
    return " · ".join(f"{key}: {_text(value)}" for key, value in sorted(payload.items()))
