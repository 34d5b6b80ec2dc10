"""Forms of the project pages: create a project, add a member, change a member's role."""

from django import forms

from controlplane.names import validate_name
from controlplane.projects.models import Role, slug_validator


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=120, validators=[validate_name])
    slug = forms.CharField(
        max_length=63, validators=[slug_validator], help_text="lowercase letters, digits, hyphens"
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    organisation = forms.ModelChoiceField(
        queryset=None, to_field_name="slug", empty_label=None, required=True
    )

    def __init__(self, *args, organisations=None, **kwargs):
        """``organisations``: where the user may create a project (the choices); none at
        all for a user in no organisation (the project goes to the default one)."""
        super().__init__(*args, **kwargs)
        if organisations is None or not organisations.exists():
            del self.fields["organisation"]
        else:
            self.fields["organisation"].queryset = organisations


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
