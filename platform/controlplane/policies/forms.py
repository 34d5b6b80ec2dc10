"""Forms of the compliance pages. They check shape only (a number is a number, a list is
one entry a line); the services decide the rest (an unknown licence, a retention range
upside down, a stale version), and their field errors are put back next to the fields.

A rule's form is built from the catalogue (rules.py), so a parameter added there appears
on the page without touching this file.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.utils.html import escape

from controlplane.policies.rules import RULES, Rule
from controlplane.policies.services import MAX_REASON
from controlplane.policies.waivers import MAX_TEXT, WAIVABLE

# Lists of thresholds ({metric, op, value}) are written one a line: "val_loss <= 2.5".
THRESHOLD_LINE = re.compile(r"^\s*(?P<metric>[^\s<>=]+)\s*(?P<op><=|>=|<|>)\s*(?P<value>\S+)\s*$")
LIST_OF_DICTS = {"thresholds"}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def threshold_text(thresholds: list[dict[str, Any]]) -> str:
    return "\n".join(f"{t['metric']} {t['op']} {t['value']:g}" for t in thresholds)


class RuleForm(forms.Form):
    """One rule: on or off, its parameters, the reason for the change and the version the
    editor saw (hidden), so that a concurrent edit is a 409 rather than a lost change."""

    base_version = forms.IntegerField(min_value=0, widget=forms.HiddenInput)
    enabled = forms.BooleanField(required=False, label="Enabled")
    reason = forms.CharField(
        max_length=MAX_REASON,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why the policy changes (recorded in its history and the audit trail).",
    )

    def __init__(self, rule: Rule, values: dict[str, Any], base_version: int, *args, **kwargs):
        kwargs.setdefault("prefix", rule.key.value)
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.fields["base_version"].initial = base_version
        self.fields["enabled"].initial = bool(values.get("enabled"))
        reason = self.fields.pop("reason")
        for param in rule.params:
            self.fields[param.name] = self._field(param, values.get(param.name, param.default))
        self.fields["reason"] = reason  # last, below the parameters

    @staticmethod
    def _field(param, value) -> forms.Field:
        # Django renders help_text as HTML; the catalogue's is text ("LicenseRef-<name>").
        help_text = escape(param.help)
        common = {"label": param.label, "help_text": help_text}
        default = param.default
        if param.choices:
            return forms.ChoiceField(
                choices=[(c, c.replace("_", " ")) for c in param.choices], initial=value, **common
            )
        if isinstance(default, bool):
            return forms.BooleanField(required=False, initial=bool(value), **common)
        if isinstance(default, int):
            return forms.IntegerField(initial=value, **common)
        if isinstance(default, float):
            return forms.FloatField(initial=value, **common)
        if param.name in LIST_OF_DICTS:
            help_text = escape(f"{param.help} One a line: metric op value (op: <= < >= >).")
            return forms.CharField(
                required=False,
                initial=threshold_text(value or []),
                widget=forms.Textarea(attrs={"rows": 3, "class": "code"}),
                label=param.label,
                help_text=help_text,
            )
        return forms.CharField(
            required=False,
            initial="\n".join(value or []),
            widget=forms.Textarea(attrs={"rows": 3}),
            label=param.label,
            help_text=escape(f"{param.help} One a line."),
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for param in self.rule.params:
            if param.name not in cleaned or not isinstance(param.default, list):
                continue
            if param.name in LIST_OF_DICTS:
                cleaned[param.name] = self._thresholds(param.name, cleaned[param.name])
            else:
                cleaned[param.name] = _lines(cleaned[param.name])
        return cleaned

    def _thresholds(self, name: str, text: str) -> list[dict[str, Any]]:
        parsed = []
        for number, line in enumerate(_lines(text), start=1):
            match = THRESHOLD_LINE.match(line)
            value = None
            if match:
                try:
                    value = float(match["value"])
                except ValueError:
                    value = None
            if match is None or value is None:
                self.add_error(name, f"line {number} ('{line}') is not 'metric op number'")
                continue
            parsed.append({"metric": match["metric"], "op": match["op"], "value": value})
        return parsed

    def changes(self) -> dict[str, Any]:
        """{param: value} of the whole rule; the service keeps only what differs."""
        data = self.cleaned_data
        return {"enabled": data["enabled"], **{p.name: data[p.name] for p in self.rule.params}}

    def add_service_errors(self, fields: dict[str, list[str]], message: str) -> None:
        """A service's field errors (`rules.licences.allowed_licences.0`) next to the field
        they name; what names no field of this form goes above it."""
        prefix = f"rules.{self.rule.key.value}."
        if not fields:
            self.add_error(None, message)
        for path, problems in fields.items():
            name = path.removeprefix(prefix).split(".", 1)[0] if path.startswith(prefix) else path
            if name in self.fields:
                where = _where(path.removeprefix(prefix).removeprefix(name).lstrip("."))
                for problem in problems:
                    self.add_error(name, f"{where}: {problem}" if where else problem)
            else:
                self.add_error(None, f"{path}: {' '.join(problems)}")


def _where(rest: str) -> str:
    """ "0.op" -> "line 1, op": a list entry as the editor numbers its lines."""
    if not rest:
        return ""
    first, _, more = rest.partition(".")
    if first.isdigit():
        return f"line {int(first) + 1}" + (f", {more}" if more else "")
    return rest


def rule_form(key: str, values: dict[str, Any], base_version: int, data=None) -> RuleForm:
    return RuleForm(RULES[key], values, base_version, data=data)


class WaiverForm(forms.Form):
    rule = forms.ChoiceField(
        choices=[(k.value, f"Rule {r.number}: {r.title}") for k, r in RULES.items()]
    )
    subject_type = forms.ChoiceField(
        choices=[(t.value, t.label) for t in WAIVABLE], label="Subject"
    )
    subject_id = forms.IntegerField(min_value=1, label="Subject id")
    reason = forms.CharField(max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))
    expires_at = forms.DateTimeField(
        label="Expires",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        help_text="At most a year ahead; an expired waiver no longer lets anything pass.",
    )

    # Element ids of their own: the waiver and hold forms share a page (both have a reason).
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("auto_id", "waiver_%s")
        super().__init__(*args, **kwargs)


class HoldForm(forms.Form):
    dataset_version = forms.TypedChoiceField(coerce=int, choices=[], label="Dataset version")
    reference = forms.CharField(
        max_length=200, help_text="The erasure request it stands for (ticket, request id)."
    )
    reason = forms.CharField(
        max_length=MAX_TEXT, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )

    def __init__(self, *args, versions: list[tuple[int, str]], **kwargs):
        kwargs.setdefault("auto_id", "hold_%s")
        super().__init__(*args, **kwargs)
        self.fields["dataset_version"].choices = versions


class AssignForm(forms.Form):
    assignee = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, choices=[])

    def __init__(self, *args, members: list[tuple[int, str]], **kwargs):
        kwargs.setdefault("auto_id", False)  # one per violation on a page: no repeated ids
        super().__init__(*args, **kwargs)
        self.fields["assignee"].choices = [("", "nobody"), *members]


class CommentForm(forms.Form):
    text = forms.CharField(max_length=4000, widget=forms.Textarea(attrs={"rows": 2}))


class ResolveForm(forms.Form):
    resolution = forms.CharField(max_length=4000, label="Why it is resolved")
