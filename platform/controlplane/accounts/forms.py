"""Login forms that refuse locked-out accounts and addresses, and the token form."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.validators import MaxValueValidator

from controlplane.accounts.lockout import (
    Kind,
    Lockout,
    auth_failure_record,
    auth_success_record,
    client_address,
    lockout_for,
)
from controlplane.accounts.models import Scope
from controlplane.names import validate_name


class ThrottledLoginMixin:
    """Checks the lockout before the password is even looked at, counts every failure."""

    lockout_via = "login"
    lockout: Lockout | None = None

    def clean(self):
        username = (self.data.get("username") or "").strip()
        self.lockout = lockout_for(
            [(Kind.ACCOUNT, username), (Kind.ADDRESS, client_address(self.request))]
        )
        if self.lockout is not None:
            raise forms.ValidationError(self.lockout.message, code="locked_out")
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            self.lockout = auth_failure_record(
                request=self.request, via=self.lockout_via, username=username
            )
            if self.lockout is not None:
                raise forms.ValidationError(self.lockout.message, code="locked_out") from None
            raise
        auth_success_record(username=username)
        return cleaned


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    lockout_via = "login"


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    lockout_via = "admin"


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_name])
    expires_in_days = forms.IntegerField(
        min_value=1,
        required=False,
        help_text="empty: the longest allowed",
    )
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        initial=[Scope.API_READ, Scope.API_WRITE],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="none ticked: api:read and api:write",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limit = settings.API_TOKEN_MAX_DAYS
        self.fields["expires_in_days"].validators.append(MaxValueValidator(limit))
        self.fields["expires_in_days"].help_text = f"at most {limit}; empty: {limit}"
        self.fields["expires_in_days"].widget.attrs["max"] = limit
