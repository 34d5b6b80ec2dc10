"""Forms of the request pages. They check shape (a date is a date, the identifiers are
`type: value` lines); the services decide the rest, and their field errors are put back
next to the fields."""

from __future__ import annotations

from django import forms
from django.utils import timezone

from controlplane.gdpr import identifiers as ids
from controlplane.gdpr.deadlines import MAX_EXTENSION_MONTHS
from controlplane.gdpr.errors import GdprError
from controlplane.gdpr.models import RequestKind, RequestScope
from controlplane.gdpr.services import MAX_TEXT


class FileForm(forms.Form):
    kind = forms.ChoiceField(choices=RequestKind.choices, widget=forms.RadioSelect)
    identifiers = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "email: ann@example.com\ncustomer_id: C-1042"}
        ),
        max_length=ids.MAX_IDENTIFIERS * (ids.MAX_VALUE + 50),
        help_text="One a line, as type: value. Stored encrypted; the audit trail keeps only "
        "keyed hashes.",
    )
    legal_basis = forms.CharField(
        max_length=MAX_TEXT,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Legal basis / reason",
        help_text="E.g. Art. 17(1)(b): consent withdrawn. Do not repeat the identifiers here.",
    )
    scope = forms.ChoiceField(
        choices=RequestScope.choices,
        initial=RequestScope.PROJECT,
        required=False,
        widget=forms.RadioSelect,
        help_text="Every project of the organisation: filed and reviewed by the "
        "organisation's admins, then carried out in each project.",
    )
    received_on = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="When the request reached you, if earlier than today (a letter). "
        "The deadline is one calendar month later.",
    )

    def clean_identifiers(self) -> list[ids.Identifier]:
        try:
            return ids.parse_lines(self.cleaned_data["identifiers"])
        except GdprError as error:
            raise forms.ValidationError(error.message) from None

    def clean_scope(self) -> str:
        return self.cleaned_data.get("scope") or RequestScope.PROJECT

    def clean_received_on(self):
        value = self.cleaned_data.get("received_on")
        if value is not None and value > timezone.localdate():
            raise forms.ValidationError("a request cannot be received in the future")
        return value

    def add_service_errors(self, error: GdprError) -> None:
        placed = False
        for name, messages in error.fields.items():
            field = name.split(".")[0]
            field = "received_on" if field == "received_at" else field
            if field in self.fields:
                for message in messages:
                    self.add_error(field, message)
                placed = True
        if not placed:
            self.add_error(None, error.message)


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    reason = forms.CharField(max_length=MAX_TEXT)


class ExtendForm(forms.Form):
    months = forms.TypedChoiceField(
        coerce=int, choices=[(n, f"{n} month{'s' if n > 1 else ''}") for n in (1, 2)]
    )
    reason = forms.CharField(
        max_length=MAX_TEXT,
        help_text=f"Why more time is needed (at most {MAX_EXTENSION_MONTHS} months in total).",
    )
