"""Forms of the registry's pages. They check shape only; the services decide the rest
(a name taken, a job without a model, an alias a version cannot move to)."""

from __future__ import annotations

import math

from django import forms

from controlplane.registry.models import MODEL_NAME_PATTERN, alias_validator, model_name_validator
from controlplane.registry.rules import THRESHOLD_OPS

MAX_TEXT = 20_000


class RegisterForm(forms.Form):
    """On a succeeded job's page: a new model, or a new version of an existing one."""

    target = forms.ChoiceField(
        choices=[("new", "a new model"), ("existing", "a new version of")],
        widget=forms.RadioSelect,
        initial="new",
    )
    new_name = forms.CharField(
        max_length=100,
        required=False,
        label="New model's name",
        validators=[model_name_validator],
        widget=forms.TextInput(attrs={"pattern": MODEL_NAME_PATTERN[1:-1]}),
    )
    existing = forms.ChoiceField(choices=[], required=False, label="Existing model")
    description = forms.CharField(
        max_length=MAX_TEXT, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )

    def __init__(self, *args, model_names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["existing"].choices = [("", "—")] + [(n, n) for n in model_names]
        if not model_names:
            self.fields["target"].choices = [("new", "a new model")]

    def clean(self):
        data = super().clean()
        if data.get("target") == "existing":
            if not data.get("existing"):
                self.add_error("existing", "pick the model this job is a new version of")
            data["model_name"], data["create_model"] = data.get("existing"), False
        else:
            if not data.get("new_name"):
                self.add_error("new_name", "name the new model")
            data["model_name"], data["create_model"] = data.get("new_name"), True
        return data


class VersionEditForm(forms.Form):
    intended_use = forms.CharField(
        max_length=MAX_TEXT,
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Markdown. What the model is for, and what it must not be used for.",
    )
    limitations = forms.CharField(
        max_length=MAX_TEXT,
        required=False,
        label="Known limitations",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Markdown. The card adds what the registry knows (data, size, evaluation).",
    )
    description = forms.CharField(
        max_length=MAX_TEXT, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class ModelDescriptionForm(forms.Form):
    description = forms.CharField(
        max_length=MAX_TEXT, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class AliasForm(forms.Form):
    alias = forms.CharField(max_length=64, validators=[alias_validator])
    version = forms.TypedChoiceField(coerce=int, choices=[])
    reason = forms.CharField(max_length=2000, required=False)

    def __init__(self, *args, numbers: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"].choices = [(n, f"v{n}") for n in numbers]


class ThresholdsForm(forms.Form):
    """One gate a line: `val_loss <= 2.0`, `recognition >= 0.9` (empty: no gate)."""

    thresholds = forms.CharField(
        required=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 4, "class": "code"}),
        help_text="One per line: metric, then <=, <, >= or >, then a number. "
        "A protected alias only moves to a version whose latest evaluation passes them all.",
    )

    @staticmethod
    def as_text(thresholds: list[dict]) -> str:
        return "\n".join(f"{t['metric']} {t['op']} {t['value']}" for t in thresholds)

    def clean_thresholds(self) -> list[dict]:
        gates = []
        for number, line in enumerate(self.cleaned_data["thresholds"].splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 3 or parts[1] not in THRESHOLD_OPS:
                raise forms.ValidationError(
                    f"line {number}: write it as `metric op value`, op one of "
                    f"{', '.join(THRESHOLD_OPS)} (got {line.strip()!r})"
                )
            metric, op, text = parts
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise forms.ValidationError(f"line {number}: {text!r} is not a finite number")
            gates.append({"metric": metric, "op": op, "value": value})
        return gates


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    reason = forms.CharField(
        max_length=2000, widget=forms.TextInput(attrs={"placeholder": "why (required)"})
    )


class ProtectedAliasesForm(forms.Form):
    """The project's protected aliases, separated by commas or spaces."""

    aliases = forms.CharField(
        required=False,
        max_length=2000,
        label="Protected aliases",
        help_text="Moving one of these needs a passing evaluation and a second person's "
        "approval. Empty: no alias is protected.",
    )

    def clean_aliases(self) -> list[str]:
        return self.cleaned_data["aliases"].replace(",", " ").split()
